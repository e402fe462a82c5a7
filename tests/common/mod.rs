//! Test kit: starts the real `meshgate` binary and waits on conditions with deadlines.

#![allow(dead_code)] // each test file uses a different part of the kit

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod kafka;

/// A running `meshgate run` process, killed on drop.
pub struct NodeProc {
    child: Child,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// The mesh's UDP address, when the node runs with certificates.
    pub mesh: Option<SocketAddr>,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The node's own data directory, unless the test passed `--data-dir` itself.
    _data: Option<tempfile::TempDir>,
}

/// The binary under test: Cargo's fresh build, or `MESHGATE_BIN` (e.g. a release build, to
/// time the mesh tests: `MESHGATE_BIN=target/release/meshgate cargo test --test mesh`).
pub fn bin() -> PathBuf {
    std::env::var_os("MESHGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_meshgate")))
}

impl NodeProc {
    /// Starts a node on free loopback ports with extra arguments.
    pub fn start(extra: &[&str]) -> NodeProc {
        Self::start_env(extra, &[])
    }

    /// Starts a node with extra arguments and environment variables.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(extra);
        // Each node gets a data directory of its own unless the test brings one (to restart a
        // node on its data).
        let data = if extra.contains(&"--data-dir") {
            None
        } else {
            let d = tempfile::tempdir().expect("temp dir");
            cmd.arg("--data-dir").arg(d.path());
            Some(d)
        };
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn meshgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("serving MQTT on")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("meshgate did not start: {}", log.lock().unwrap());
            }
        };
        // "meshgate X serving MQTT on A and HTTP on B (Ctrl-C to stop)"
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |w: &str| -> Option<SocketAddr> {
            let i = words.iter().position(|x| *x == w)?;
            Some(words[i + 2].parse().expect("address"))
        };
        let node = NodeProc {
            child,
            mqtt: after("MQTT").expect("startup line names MQTT"),
            http: after("HTTP").expect("startup line names HTTP"),
            mesh: after("mesh"),
            log,
            _data: data,
        };
        wait_until("healthz", Duration::from_secs(10), || {
            http_get(node.http, "/healthz").is_some_and(|(s, _)| s == 200)
        });
        node
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts the node still serves: process up, health answered, MQTT accepts a connection.
    pub fn assert_serving(&mut self) {
        assert!(self.alive(), "node exited: {}", self.log.lock().unwrap());
        let (status, _) = http_get(self.http, "/healthz").expect("healthz answers");
        assert_eq!(status, 200);
        let mut s = std::net::TcpStream::connect(self.mqtt).expect("mqtt accepts");
        // A valid MQTT 3.1.1 CONNECT gets a CONNACK.
        use std::io::Write;
        s.write_all(&mqtt_connect_v4("probe")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).expect("connack");
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    }

    /// `GET /v1/node`, or `None` while the node does not answer.
    pub fn node_info(&self) -> Option<meshgate_api::NodeInfo> {
        let (status, body) = http_get(self.http, "/v1/node")?;
        (status == 200).then(|| serde_json::from_str(&body).expect("GET /v1/node"))
    }

    /// `GET /v1/mesh`.
    pub fn mesh_view(&self) -> meshgate_api::MeshView {
        let (status, body) = http_get(self.http, "/v1/mesh").expect("GET /v1/mesh");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The node's process id (to pause it, or read its memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's resident memory now, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The sum of every sample of the Prometheus series `name` whose labels contain each of
    /// `labels` (e.g. `reason="queue_full"`); 0 when there is none.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = http_get(self.http, "/metrics").expect("GET /metrics");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw MQTT 3.1.1 CONNECT with clean session and keep-alive 60.
pub fn mqtt_connect_v4(client_id: &str) -> Vec<u8> {
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    var.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    var.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, var.len() as u8];
    p.extend(var);
    p
}

/// A minimal blocking HTTP/1.1 GET: (status, body). None if the connection failed.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, &[])
}

/// A minimal blocking HTTP/1.1 request with `Connection: close`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    http_request_with(addr, method, path, &[], body)
}

/// [`http_request`] with extra headers. Waits up to 60 s for the answer.
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of a command the tests need; fails loudly when the test setup did not install it.
pub fn need(cmd: &str) -> PathBuf {
    need_msg(
        cmd,
        "run scripts/test.sh, which installs the test peers (apt-get install mosquitto-clients)",
    )
}

/// Like [`need`], with the remedy to print. Also looks in `~/.cargo/bin` (cargo-installed peers).
pub fn need_msg(cmd: &str, remedy: &str) -> PathBuf {
    let home = std::env::var("HOME").map(|h| format!("{h}/.cargo/bin"));
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(home.as_deref().ok()) {
        let p = Path::new(dir).join(cmd);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{cmd}` is not installed: {remedy}");
}

/// A mosquitto client command (`mosquitto_pub` or `mosquitto_sub`) aimed at `node`'s MQTT port
/// with protocol `version` (`mqttv311` or `mqttv5`).
pub fn mosquitto(cmd: &str, node: &NodeProc, version: &str) -> Command {
    let mut c = Command::new(need(cmd));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &node.mqtt.port().to_string(),
        "-V",
        version,
    ]);
    c
}

/// An MQTT 3.1.1 client of `node` (rumqttc) whose incoming packets arrive on a channel.
pub async fn mqtt_v4(
    node: &NodeProc,
    id: &str,
    clean: bool,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
) {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", node.mqtt.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 10_000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let rumqttc::Event::Incoming(p) = e
                && tx.send(p).is_err()
            {
                break;
            }
        }
    });
    (c, rx)
}

/// An MQTT 5 client of `node` (rumqttc) with client id `id` and, if given, a user name and
/// password; its incoming packets arrive on a channel.
pub async fn mqtt_v5(
    node: &NodeProc,
    id: &str,
    credentials: Option<(&str, &str)>,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
) {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", node.mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = credentials {
        o.set_credentials(user, password);
    }
    let (c, mut ev) = rumqttc::v5::AsyncClient::new(o, 1000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let rumqttc::v5::Event::Incoming(p) = e
                && tx.send(p).is_err()
            {
                break;
            }
        }
    });
    (c, rx)
}

/// `meshgate cert init` and `cert issue` for each name.
pub fn certs(dir: &Path, names: &[&str]) {
    let out = Command::new(bin())
        .args(["cert", "init", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for n in names {
        let out = Command::new(bin())
            .args(["cert", "issue", "--dir"])
            .arg(dir)
            .args(["--name", n])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// A UDP port free right now on loopback (for a node that must come back on the same address).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
