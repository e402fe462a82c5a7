//! Bad input of every kind gets a clear answer for that client and nothing else happens: the
//! node keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{NodeProc, bin, http_request};

fn connect(node: &NodeProc) -> TcpStream {
    let s = TcpStream::connect(node.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until EOF (the node closed the connection); returns what came.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn v5_connect(id: &str) -> Vec<u8> {
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id.as_bytes());
    frame(0x10, &var)
}

fn v5_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut var = Vec::new();
    var.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    var.extend_from_slice(topic.as_bytes());
    var.push(0); // no properties
    var.extend_from_slice(payload);
    frame(0x30, &var)
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Connects with MQTT 5 and checks the CONNACK succeeded.
fn v5_session(node: &NodeProc, id: &str) -> TcpStream {
    let mut s = connect(node);
    s.write_all(&v5_connect(id)).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; head[1] as usize];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(rest[1], 0, "CONNACK success");
    s
}

/// The reason code of the v5 DISCONNECT the node sent before closing.
fn disconnect_reason(bytes: &[u8]) -> Option<u8> {
    (bytes.first() == Some(&0xE0)).then(|| bytes[2])
}

#[test]
fn garbage_and_malformed_packets_close_only_that_connection() {
    let mut node = NodeProc::start(&[]);
    // An HTTP request on the MQTT port.
    let mut s = connect(&node);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(read_to_close(&mut s).is_empty());
    // A remaining length that never ends.
    let mut s = connect(&node);
    s.write_all(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap();
    assert!(read_to_close(&mut s).is_empty());
    // MQTT 3.1 (level 3) and an unknown level: CONNACK 0x01 (unacceptable protocol version).
    for (name, level) in [(&b"MQIsdp"[..], 3u8), (&b"MQTT"[..], 9u8)] {
        let mut var = (name.len() as u16).to_be_bytes().to_vec();
        var.extend_from_slice(name);
        var.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'x']);
        let mut s = connect(&node);
        s.write_all(&frame(0x10, &var)).unwrap();
        assert_eq!(read_to_close(&mut s), [0x20, 0x02, 0x00, 0x01]);
    }
    // A malformed packet after a good CONNECT: SUBSCRIBE with a truncated filter.
    let mut s = v5_session(&node, "malformed");
    s.write_all(&frame(0x82, &[0, 1, 0, 0, 9, b'a'])).unwrap();
    assert_eq!(disconnect_reason(&read_to_close(&mut s)), Some(0x81));
    // Half a packet, then silence, then close: nothing breaks.
    let mut s = connect(&node);
    s.write_all(&[0x10, 0x20, 0x00]).unwrap();
    drop(s);
    node.assert_serving();
}

#[test]
fn invalid_topics_get_reason_0x90() {
    let mut node = NodeProc::start(&[]);
    let long = "a/".repeat(125) + "b"; // 251 bytes
    for topic in [
        "orders/*/us",
        "orders/+/us",
        "a/#",
        "a//b",
        "/a",
        long.as_str(),
    ] {
        let mut s = v5_session(&node, "bad-topic");
        s.write_all(&v5_publish(topic, b"x")).unwrap();
        let got = read_to_close(&mut s);
        assert_eq!(
            disconnect_reason(&got),
            Some(0x90),
            "topic {topic:?}: {got:?}"
        );
    }
    // MQTT 3.1.1 has no server DISCONNECT: the connection is just closed.
    let mut s = connect(&node);
    s.write_all(&common::mqtt_connect_v4("v4-bad")).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    s.write_all(&frame(0x30, &[0, 3, b'a', b'/', b'+', b'x']))
        .unwrap();
    assert!(read_to_close(&mut s).is_empty());
    node.assert_serving();
}

#[test]
fn oversized_packets_and_payloads_are_refused() {
    // Payload limit 1000 bytes, set through the environment (also covers env overrides).
    let mut node = NodeProc::start_env(
        &[],
        &[
            ("MESHGATE_LIMITS__MAX_PAYLOAD_BYTES", "1000"),
            ("MESHGATE_MQTT__MAX_PACKET_SIZE", "4096"),
        ],
    );
    // Payload over the limit but packet within: DISCONNECT 0x95.
    let mut s = v5_session(&node, "big-payload");
    s.write_all(&v5_publish("big", &[b'x'; 2000])).unwrap();
    assert_eq!(disconnect_reason(&read_to_close(&mut s)), Some(0x95));
    // A packet announcing 10 MB: refused from the header alone, DISCONNECT 0x95.
    let mut s = v5_session(&node, "huge-packet");
    let mut header = vec![0x30];
    header.extend_from_slice(&[0x80, 0xAD, 0xE2, 0x04]); // 10,000,000
    s.write_all(&header).unwrap();
    assert_eq!(disconnect_reason(&read_to_close(&mut s)), Some(0x95));
    // HTTP: 413 with a JSON error.
    let (status, body) = http_request(node.http, "POST", "/v1/publish/big", &[b'x'; 2000]).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("\"error\"") && body.contains("1000"),
        "{body}"
    );
    let (status, _) = http_request(node.http, "POST", "/v1/publish/small", &[b'x'; 1000]).unwrap();
    assert_eq!(status, 200);
    node.assert_serving();
}

#[test]
fn unknown_config_key_is_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[mqtt]\nlisten = \"127.0.0.1:0\"\nmax_packet_sise = 10\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_packet_sise"), "{err}");
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_packet_sise"));
    for good in [
        "config/meshgate.toml",
        "config/bridges.toml",
        "config/governance.toml",
    ] {
        let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(good);
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&good)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            good.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // What it prints never shows a password, token or a URL's password.
        let shown = String::from_utf8_lossy(&out.stdout);
        for secret in ["change-me-2", "onboarding-token-change-me", "guest:guest@"] {
            assert!(!shown.contains(secret), "{} shows {secret}", good.display());
        }
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args(["run", "--mqtt", &addr, "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for MQTT on {addr}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

#[test]
fn http_errors_are_json_with_the_right_status() {
    let mut node = NodeProc::start(&[]);
    for (method, path, status) in [
        ("POST", "/v1/publish/orders/*/us", 400),
        ("POST", "/v1/publish/a//b", 400),
        ("POST", "/v1/publish/", 400),
        ("GET", "/v1/subscribe?filter=a/%3E/b", 400),
        ("GET", "/v1/subscribe", 400),
        ("GET", "/v1/nothing-here", 404),
    ] {
        let (got, body) = http_request(node.http, method, path, b"x").unwrap();
        assert_eq!(got, status, "{method} {path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    node.assert_serving();
}
