//! Time- and identity-related MQTT behaviour: keep-alive, session expiry, will delay, QoS 2 from
//! publishers, and the user/password hook. Waits are conditions with deadlines.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{NodeProc, need, wait_until};
use meshgate_api::NodeInfo;

fn node_stat(node: &NodeProc, key: fn(&NodeInfo) -> u64) -> u64 {
    node.node_info().map_or(u64::MAX, |n| key(&n))
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

/// MQTT 5 CONNECT with keep-alive, session expiry and an optional will with a delay.
fn v5_connect(id: &str, keep_alive: u16, expiry: u32, will: Option<(&str, &str, u32)>) -> Vec<u8> {
    let mut flags = 0x00; // clean start off: sessions may persist
    if will.is_some() {
        flags |= 0x04;
    }
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags];
    var.extend_from_slice(&keep_alive.to_be_bytes());
    var.extend_from_slice(&[5, 0x11]);
    var.extend_from_slice(&expiry.to_be_bytes());
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id.as_bytes());
    if let Some((topic, msg, delay)) = will {
        var.extend_from_slice(&[5, 0x18]);
        var.extend_from_slice(&delay.to_be_bytes());
        var.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        var.extend_from_slice(topic.as_bytes());
        var.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        var.extend_from_slice(msg.as_bytes());
    }
    frame(0x10, &var)
}

fn open(node: &NodeProc, connect: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(node.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(connect).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).unwrap();
    assert_eq!((head[0], rest[1]), (0x20, 0), "CONNACK success");
    s
}

#[test]
fn keep_alive_timeout_disconnects_with_0x8d() {
    let mut node = NodeProc::start(&[]);
    let mut s = open(&node, &v5_connect("sleepy", 1, 0, None));
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let waited = t.elapsed();
    assert_eq!(out.first(), Some(&0xE0), "DISCONNECT: {out:?}");
    assert_eq!(out[2], 0x8D, "keep alive timeout");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    node.assert_serving();
}

#[test]
fn session_expiry_ends_the_session_and_will_delay_waits() {
    let node = NodeProc::start(&[]);
    let mut watcher = common::mosquitto("mosquitto_sub", &node, "mqttv5")
        .args(["-t", "status/#", "-v", "-C", "1", "-W", "15"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("watcher subscribed", Duration::from_secs(10), || {
        node_stat(&node, |n| n.subscriptions) == 2
    });
    // Session expiry 2 s, will delayed 1 s; the client vanishes without DISCONNECT.
    let s = open(
        &node,
        &v5_connect("fleeting", 60, 2, Some(("status/fleeting", "gone", 1))),
    );
    let t = Instant::now();
    drop(s);
    let out = watcher.wait_with_output_timeout();
    let will_after = t.elapsed();
    assert_eq!(out, "status/fleeting gone\n");
    assert!(
        will_after >= Duration::from_millis(900),
        "will delayed: {will_after:?}"
    );
    // The watcher left after the will; the vanished client's session lives until it expires.
    wait_until("session expired", Duration::from_secs(10), || {
        node_stat(&node, |n| n.sessions) == 0
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "expiry honoured: {:?}",
        t.elapsed()
    );
}

trait WaitOutput {
    fn wait_with_output_timeout(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_timeout(&mut self) -> String {
        // mosquitto_sub exits by itself after -C 1 or -W 15.
        let mut out = String::new();
        self.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.wait();
        out
    }
}

#[test]
fn qos2_publish_is_delivered_once() {
    let node = NodeProc::start(&[]);
    let sub = Command::new(need("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &node.mqtt.port().to_string()])
        .args(["-t", "q2/#", "-q", "2", "-v", "-C", "3", "-W", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("subscribed", Duration::from_secs(10), || {
        node_stat(&node, |n| n.subscriptions) == 2
    });
    for m in ["one", "two", "three"] {
        let st = Command::new(need("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &node.mqtt.port().to_string()])
            .args(["-t", "q2/x", "-q", "2", "-m", m])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "q2/x one\nq2/x two\nq2/x three\n"
    );
}

#[test]
fn users_and_anonymous_access() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("auth.toml");
    std::fs::write(
        &cfg,
        "[mqtt]\nallow_anonymous = false\n[[mqtt.users]]\nusername = \"shop\"\npassword = \"s3cret\"\napp_id = \"acme.shop\"\n",
    )
    .unwrap();
    let node = NodeProc::start(&["--config", cfg.to_str().unwrap()]);
    let run = |args: &[&str]| {
        common::mosquitto("mosquitto_pub", &node, "mqttv311")
            .args(["-t", "t", "-m", "x"])
            .args(args)
            .output()
            .unwrap()
    };
    let anon = run(&[]);
    assert!(!anon.status.success());
    assert!(
        String::from_utf8_lossy(&anon.stderr)
            .to_lowercase()
            .contains("not authori"),
        "{:?}",
        anon
    );
    let wrong = run(&["-u", "shop", "-P", "nope"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .to_lowercase()
            .contains("password"),
        "{:?}",
        wrong
    );
    let ok = run(&["-u", "shop", "-P", "s3cret"]);
    assert!(ok.status.success(), "{:?}", ok);
}
