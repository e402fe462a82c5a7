//! mosquitto's own clients (`mosquitto_pub`, `mosquitto_sub`) against a real node, both MQTT
//! versions. The test setup installs them (`scripts/test.sh`); a missing client fails the test.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{NodeProc, wait_until};

fn sub(node: &NodeProc, version: &str, args: &[&str]) -> std::process::Child {
    common::mosquitto("mosquitto_sub", node, version)
        .args(["-v"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

fn publ(node: &NodeProc, version: &str, args: &[&str]) {
    let out = common::mosquitto("mosquitto_pub", node, version)
        .args(args)
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the node reports at least `n` subscriptions.
fn wait_subs(node: &NodeProc, n: u64) {
    wait_until("subscriptions registered", Duration::from_secs(10), || {
        node.node_info().is_some_and(|i| i.subscriptions >= n)
    });
}

fn run_version(version: &str) {
    let node = NodeProc::start(&[]);
    let child = sub(
        &node,
        version,
        &["-t", "orders/+/us/#", "-q", "1", "-C", "3", "-W", "20"],
    );
    wait_subs(&node, 2); // `#` subscribes to the parent and the subtree
    for (t, m) in [
        ("orders/17/us/ny/store-4", "a"),
        ("orders/17/eu/x", "nope"),
        ("orders/17/us", "b"),
        ("orders/18/us/ca", "c"),
    ] {
        publ(&node, version, &["-t", t, "-m", m, "-q", "1"]);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "orders/17/us/ny/store-4 a\norders/17/us b\norders/18/us/ca c\n"
    );
}

#[test]
fn mosquitto_clients_mqtt5() {
    run_version("mqttv5");
}

#[test]
fn mosquitto_clients_mqtt311() {
    run_version("mqttv311");
}

#[test]
fn mosquitto_persistent_session_receives_what_arrived_while_away() {
    let node = NodeProc::start(&[]);
    // Subscribe with a persistent session (-c, fixed id), leave at once (-E).
    let out = common::mosquitto("mosquitto_sub", &node, "mqttv311")
        .args(["-c", "-i", "night-shift", "-q", "1", "-t", "shift/#", "-E"])
        .output()
        .unwrap();
    assert!(out.status.success());
    publ(
        &node,
        "mqttv311",
        &["-t", "shift/report", "-m", "all quiet", "-q", "1"],
    );
    let out = common::mosquitto("mosquitto_sub", &node, "mqttv311")
        .args([
            "-c",
            "-i",
            "night-shift",
            "-q",
            "1",
            "-t",
            "shift/#",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "shift/report all quiet\n"
    );
}

#[test]
fn mosquitto_pub_to_wildcard_topic_is_refused_and_node_keeps_serving() {
    let mut node = NodeProc::start(&[]);
    // mosquitto_pub itself refuses `+`; our own wildcard `*` reaches the node and is refused.
    let out = common::mosquitto("mosquitto_pub", &node, "mqttv5")
        .args(["-d", "-t", "orders/*/us", "-m", "x", "-q", "1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "publish to a wildcard topic must fail"
    );
    // With -d, mosquitto_pub prints the reason code of the DISCONNECT: 144 = 0x90.
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("Received DISCONNECT (144)"), "{log}");
    node.assert_serving();
}
