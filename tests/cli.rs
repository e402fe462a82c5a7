//! The command line: `--version`, `--help`, and the `pub` / `sub` clients against a real node.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{NodeProc, bin, http_get, wait_until};

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
        http_get(node.http, "/v1/node")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["subscriptions"].as_u64() >= Some(1))
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
