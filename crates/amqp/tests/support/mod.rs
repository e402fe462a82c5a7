//! What the RabbitMQ tests share: RabbitMQ itself (started when it is not running), a plain
//! lapin client for the test's side, and a node (broker, store, bridge context).

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use meshgate_amqp::AmqpConfig;
use meshgate_bridge::{BridgeContext, BridgeStatus, Bridges};
use meshgate_broker::{Broker, BrokerConfig, Delivery, MailboxReceiver, SubOptions};
use meshgate_proto::Envelope;
use meshgate_store::{Commit, Disk};
use meshgate_topic::Filter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const RABBIT: &str = "127.0.0.1:5672";
pub const NODE: &str = "test-node";
pub const LOCK: &str = "/tmp/meshgate-rabbitmq.lock";

// ---------------------------------------------------------------------------------------------
// RabbitMQ

pub fn rabbit_listens() -> bool {
    let addr: SocketAddr = RABBIT.parse().expect("a socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Makes sure RabbitMQ runs on [`RABBIT`], starting it as `shared/PEERS.md` shows when it does
/// not. One process starts it (file lock); it is left running for the next tests.
pub fn ensure_rabbitmq() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if rabbit_listens() {
            return;
        }
        let lock = File::create(LOCK).unwrap_or_else(|e| panic!("cannot create {LOCK}: {e}"));
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock {LOCK}: {e}"));
        if !rabbit_listens() {
            start_rabbitmq();
        }
        drop(lock);
    });
}

pub fn rabbit_env(c: &mut Command) -> &mut Command {
    c.env("RABBITMQ_NODENAME", "rabbit@localhost")
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", "5672")
        .env("RABBITMQ_DIST_PORT", "25672")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}",
        )
}

pub fn start_rabbitmq() {
    let installed = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server && command -v rabbitmqctl"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "RabbitMQ is not running on {RABBIT} and rabbitmq-server is not installed: \
         run scripts/test.sh, which installs it (apt-get install rabbitmq-server)"
    );
    eprintln!("starting RabbitMQ on {RABBIT}");
    // Detached, with no pipe of ours: the test harness must not wait for it to close them.
    let status = rabbit_env(&mut Command::new("rabbitmq-server"))
        .arg("-detached")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run rabbitmq-server: {e}"));
    assert!(
        status.success(),
        "rabbitmq-server -detached failed: {status}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The first call right after -detached fails at once (node not registered yet): retry.
        let out = rabbit_env(&mut Command::new("rabbitmqctl"))
            .args([
                "-n",
                "rabbit@localhost",
                "-q",
                "await_startup",
                "--timeout",
                "60",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        if out.status.success() && rabbit_listens() {
            return;
        }
        let last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            Instant::now() < deadline,
            "RabbitMQ did not start within 60 s; last rabbitmqctl await_startup said: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `rabbitmqctl` against the test node; panics with its output when it fails.
pub fn ctl(args: &[&str]) -> String {
    let out = rabbit_env(&mut Command::new("rabbitmqctl"))
        .args(["-n", "rabbit@localhost", "-q"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost of one test, deleted (with everything in it) when the test ends, passed or not.
pub struct Vhost(String);

impl Vhost {
    pub fn new() -> Self {
        let name = unique("vh");
        ctl(&["add_vhost", &name]);
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self(name)
    }
}

impl std::ops::Deref for Vhost {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbit_env(&mut Command::new("rabbitmqctl"))
            .args(["-n", "rabbit@localhost", "-q", "delete_vhost", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

pub fn url(vhost: &str) -> String {
    format!("amqp://guest:guest@{RABBIT}/{vhost}")
}

/// A plain lapin client for the test's side of RabbitMQ.
pub async fn client(vhost: &str) -> (Connection, Channel) {
    let mut uri: AMQPUri = url(vhost).parse().expect("a valid url");
    // amq-protocol-uri turns an IP host into "localhost"; RabbitMQ listens on 127.0.0.1 only.
    uri.authority.host = "127.0.0.1".into();
    let conn = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .expect("the test connects to RabbitMQ");
    let ch = conn.create_channel().await.expect("a channel");
    (conn, ch)
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn topic_exchange(ch: &Channel, name: &str) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare exchange");
}

pub async fn queue_bound(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare queue");
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind queue");
}

/// Messages ready in `queue` (not counting unacknowledged ones).
pub async fn ready(ch: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("the queue exists")
        .message_count()
}

pub async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    payload: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        exchange.into(),
        ShortString::from(key),
        BasicPublishOptions::default(),
        payload,
        props,
    )
    .await
    .expect("publish");
}

// ---------------------------------------------------------------------------------------------
// A node: a broker with a store, and the context the bridge runs in

pub struct Node {
    pub broker: Broker,
    pub ctx: BridgeContext,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let broker = Broker::new(BrokerConfig {
            node_name: NODE.into(),
            ..Default::default()
        });
        broker.set_disk(Disk::new(Commit::Group(Duration::from_millis(1)), 1 << 30));
        let (stop, shutdown) = watch::channel(false);
        let ctx = BridgeContext {
            broker: broker.clone(),
            node: NODE.into(),
            dir: Some(dir.path().join("bridges")),
            bridges: Bridges::default(),
            shutdown,
        };
        Self {
            broker,
            ctx,
            stop,
            _dir: dir,
        }
    }

    pub fn status(&self, name: &str) -> Arc<BridgeStatus> {
        self.ctx
            .bridges
            .list()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no bridge {name}"))
    }

    /// A mesh subscriber (QoS 1) on `filter`.
    pub async fn subscribe(&self, filter: &str) -> MailboxReceiver {
        let mb = self.broker.new_mailbox(100_000);
        let rx = mb.attach().await;
        let qos1 = SubOptions {
            qos: 1,
            ..Default::default()
        };
        self.broker
            .subscribe(&mb, &Filter::parse(filter).expect("a filter"), None, qos1);
        rx
    }

    pub async fn subscribed(&self, filter: &str) {
        wait_until(&format!("a subscription to {filter}"), 10, || {
            self.broker
                .subscriptions()
                .iter()
                .any(|(f, _, _)| f == filter)
        })
        .await;
    }

    pub fn publish(&self, topic: &str, payload: String) {
        let mut p = self.broker.publisher("test", None);
        let env = Envelope {
            topic: topic.into(),
            payload: Bytes::from(payload),
            content_type: "text/plain".into(),
            ..Default::default()
        };
        self.broker.publish(&mut p, env, 1).expect("published");
    }

    pub async fn stop(&self, tasks: Vec<JoinHandle<()>>) {
        self.stop.send_replace(true);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("the bridge stops within 10 s")
                .expect("the bridge task does not panic");
        }
    }
}

pub fn config(v: serde_json::Value) -> AmqpConfig {
    serde_json::from_value(v).expect("a valid config")
}

pub async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn next_event(rx: &mut MailboxReceiver, secs: u64) -> Delivery {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no event within {secs} s"))
        .expect("the mailbox is open")
}

pub fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("utf-8")
}
