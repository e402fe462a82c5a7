//! The command line: `--version`, `--help`, and the `pub` / `sub` clients against a real node.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{NodeProc, bin, wait_until};

#[test]
fn version_and_help() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("meshgate {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--name",
        "--mqtt",
        "--http",
        "--mesh",
        "--peer",
        "--data-dir",
        "--tls-dir",
    ] {
        assert!(help.contains(flag), "run --help lists {flag}:\n{help}");
    }
    let out = Command::new(bin()).arg("no-such-command").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn pub_and_sub_clients() {
    let node = NodeProc::start(&[]);
    let addr = node.mqtt.to_string();
    let sub = Command::new(bin())
        .args([
            "sub",
            "--addr",
            &addr,
            "-q",
            "1",
            "-C",
            "2",
            "orders/*/us/>",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("sub subscribed", Duration::from_secs(10), || {
        node.node_info().is_some_and(|n| n.subscriptions >= 1)
    });
    let st = Command::new(bin())
        .args([
            "pub",
            "--addr",
            &addr,
            "-q",
            "1",
            "orders/17/us/ny",
            "first",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let mut p = Command::new(bin())
        .args(["pub", "--addr", &addr, "--lines", "orders/17/us/ca"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin.take().unwrap().write_all(b"second\n").unwrap();
    assert!(p.wait().unwrap().success());
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "orders/17/us/ny first\norders/17/us/ca second\n"
    );
    // A node that is not there: a clear error and a non-zero exit.
    drop(node);
    let out = Command::new(bin())
        .args(["pub", "--addr", &addr, "t", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection to"));
}

#[test]
fn demo_routes_from_one_edge_to_the_other() {
    use std::io::{BufRead, BufReader};
    let mut demo = Command::new(bin())
        .args([
            "demo",
            "--mqtt-port",
            "0",
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C stops the demo") {
                let _ = tx.send(text.clone());
            }
        }
    });
    let text = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo prints its instructions");
    // The table row of a node: name, role, MQTT address, ...
    let mqtt_of = |name: &str| -> String {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"))
            .to_string()
    };
    let (e1, e2) = (mqtt_of("edge-1"), mqtt_of("edge-2"));
    let mut sub = Command::new(bin())
        .args(["sub", "--addr", &e2, "-C", "1", "orders/+/us/#"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish on edge-1 until the subscription made on edge-2 has reached it through the core.
    let start = std::time::Instant::now();
    while sub.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "nothing arrived");
        let st = Command::new(bin())
            .args(["pub", "--addr", &e1, "orders/17/us/ny", "hello"])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "orders/17/us/ny hello\n"
    );
    let _ = demo.kill();
    let _ = demo.wait();
}

#[test]
fn certificate_errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    // Issuing without a CA.
    let out = Command::new(bin())
        .args(["cert", "issue", "--dir", dir, "--name", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.key"), "{err}");
    // A name that cannot be a certificate name.
    assert!(
        Command::new(bin())
            .args(["cert", "init", "--dir", dir])
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new(bin())
        .args(["cert", "issue", "--dir", dir, "--name", "bad name"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot name a node certificate"));
    // Running with a TLS directory that lacks this node's certificate.
    let out = Command::new(bin())
        .args([
            "run",
            "--name",
            "ghost",
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--mesh",
            "127.0.0.1:0",
            "--tls-dir",
            dir,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mesh certificates") && err.contains("ghost.pem"),
        "{err}"
    );
}
