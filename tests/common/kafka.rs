//! Kafka side of the test kit: a real Kafka-protocol broker (`tansu`, memory storage) per test,
//! and rdkafka clients to produce and read records directly.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{need_msg, wait_until};

/// A `tansu broker` on loopback, killed on drop.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
}

/// A TCP port free right now on loopback.
pub fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_on(free_tcp())
    }

    /// Starts on `port`.
    pub fn start_on(port: u16) -> Tansu {
        Self::start_advertising(port, port)
    }

    /// Listens on `port`, tells clients to come to `advertised`.
    fn start_advertising(port: u16, advertised: u16) -> Tansu {
        let bin = need_msg(
            "tansu",
            "run scripts/test.sh, which installs it (cargo install tansu --features dynostore)",
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let adv = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(bin)
            .args(["broker", "--silent", "--listener-url", &url])
            .args(["--advertised-listener-url", &adv])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let t = Tansu {
            child: Some(child),
            port,
        };
        wait_until("tansu listening", Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        t
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic, asking again while tansu drops the connection: it listens a moment
    /// before it serves (a client right after the port opens has seen "early eof").
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for attempt in 0.. {
            let out = Command::new(need_msg("tansu", "run scripts/test.sh"))
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                .output()
                .expect("tansu topic create");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // A dropped attempt may have created it.
            if out.status.success() || (attempt > 0 && said.contains("AlreadyExists")) {
                return;
            }
            assert!(
                said.contains("early eof") && Instant::now() < deadline,
                "tansu topic create {name}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker that can go away and come back on the same address: tansu does not set
/// SO_REUSEADDR, so a killed broker cannot listen on its port again while its old connections
/// sit in TIME_WAIT. Clients talk to a proxy that the test owns; "killing Kafka" kills tansu
/// and cuts every proxied connection, "bringing it back" starts a new (empty) tansu behind the
/// same address.
pub struct Restartable {
    pub port: u16,
    tansu: Option<Tansu>,
    upstream: std::sync::Arc<std::sync::Mutex<Option<u16>>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Restartable {
    pub fn start() -> Restartable {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = std::sync::Arc::new(std::sync::Mutex::new(None));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up, cs) = (upstream.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let target = *up.lock().unwrap();
                let Some(server) = target.and_then(|p| TcpStream::connect(("127.0.0.1", p)).ok())
                else {
                    continue; // down: the connection is closed at once
                };
                let pairs = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                cs.lock().unwrap().extend([client, server]);
                for (mut from, mut to) in pairs {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        let mut r = Restartable {
            port,
            tansu: None,
            upstream,
            conns,
        };
        r.bring_back();
        r
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn tansu(&self) -> &Tansu {
        self.tansu.as_ref().expect("running")
    }

    /// Kills the broker and cuts its clients off.
    pub fn kill(&mut self) {
        *self.upstream.lock().unwrap() = None;
        self.tansu = None;
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// A new, empty broker behind the same address.
    pub fn bring_back(&mut self) {
        let t = Tansu::start_advertising(free_tcp(), self.port);
        *self.upstream.lock().unwrap() = Some(t.port);
        self.tansu = Some(t);
    }
}

/// A record to produce: key, value, headers.
pub type Record = (Option<String>, String, Vec<(&'static str, &'static str)>);

/// One record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Rec {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &v[..])
    }
}

/// Produces `records` (key, value, headers) to `topic` and waits until Kafka acknowledged all.
pub async fn produce(bootstrap: &str, topic: &str, records: &[Record]) {
    produce_with(bootstrap, topic, records, "5").await
}

/// [`produce`] one record per batch. tansu 0.6 gives a whole multi-record batch one offset in
/// its watermarks and offset lookups (reading from the beginning sees every record), so a test
/// that addresses records by offset writes them one by one.
pub async fn produce_singly(bootstrap: &str, topic: &str, records: &[Record]) {
    for r in records {
        produce_with(bootstrap, topic, std::slice::from_ref(r), "0").await;
    }
}

async fn produce_with(bootstrap: &str, topic: &str, records: &[Record], linger_ms: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms)
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for (k, v, h) in records {
        let mut headers = OwnedHeaders::new();
        for (name, value) in h {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut r = FutureRecord::to(topic)
            .payload(v.as_bytes())
            .headers(headers);
        if let Some(k) = k {
            r = r.key(k.as_bytes());
        }
        pending.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
    }
    for f in pending {
        f.await.expect("delivery").expect("acked");
    }
}

/// Reads `topic` from the beginning until `want` records arrived (then half a second more, to
/// see extras), or `limit` passed.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    limit: Duration,
) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "meshgate-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let start = Instant::now();
    let mut done_at: Option<Instant> = None;
    while start.elapsed() < limit {
        if out.len() >= want {
            let t = *done_at.get_or_insert_with(Instant::now);
            if t.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(m) = m else { continue };
        out.push(Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}
