//! Kafka clusters as mesh members, against a real Kafka-protocol broker (tansu) driven by
//! rdkafka clients, with the real `meshgate` binary and real MQTT clients.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::kafka::{Rec, Record, Restartable, Tansu, free_tcp, produce, produce_singly, read_all};
use common::{NodeProc, certs, free_udp, http_get, http_request_with, wait_until};
use meshgate_api::{BacklogView, BridgeView, ReplayReport};
use rumqttc::{AsyncClient, Packet, QoS};
use tokio::sync::mpsc::UnboundedReceiver;

/// Starts a node with `toml` as its configuration (and `args`).
fn node_with(dir: &Path, name: &str, toml: &str, args: &[&str]) -> NodeProc {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, toml).unwrap();
    let mut all = vec!["--config", file.to_str().unwrap(), "--name", name];
    all.extend_from_slice(args);
    NodeProc::start_env(
        &all,
        &[
            ("MESHGATE_MESH__GOSSIP_INTERVAL_SECS", "0.2"),
            ("MESHGATE_MESH__MAX_BACKOFF_SECS", "0.3"),
        ],
    )
}

fn bridges(n: &NodeProc) -> Vec<BridgeView> {
    let (status, body) = http_get(n.http, "/v1/bridges").expect("GET /v1/bridges");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn bridge(n: &NodeProc, member: &str, name: &str) -> BridgeView {
    bridges(n)
        .into_iter()
        .find(|b| b.member == member && b.name == name)
        .unwrap_or_else(|| panic!("no bridge {member}/{name}"))
}

/// An MQTT 3.1.1 subscriber with room for many QoS 1 messages in flight.
async fn subscriber(
    n: &NodeProc,
    id: &str,
    clean: bool,
    filter: &str,
) -> (AsyncClient, UnboundedReceiver<Packet>) {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", n.mqtt.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if tx.send(p).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // The connection is gone: tells the test that nothing more was received.
                    if tx.send(Packet::Disconnect).is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Packet::SubAck(_))) => break,
            Ok(Some(_)) => {}
            _ => panic!("no SUBACK for {filter}"),
        }
    }
    (c, rx)
}

/// (topic, payload) of the publishes received until `want` arrived (then 300 ms more, to see
/// extras) or `limit` passed.
async fn receive(
    rx: &mut UnboundedReceiver<Packet>,
    want: usize,
    limit: Duration,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let until = if out.len() >= want {
            (tokio::time::Instant::now() + Duration::from_millis(300)).min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(Packet::Publish(p))) => out.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    out
}

/// Records `i` of a keyed stream: key `k{i % keys}`, value `k{..}:{seq within key}`, header
/// region `us` for keys divisible by 3, `eu` otherwise.
fn keyed(n: usize, keys: usize) -> Vec<Record> {
    let mut seq = vec![0usize; keys];
    (0..n)
        .map(|i| {
            let k = i % keys;
            let v = format!("k{k}:{}", seq[k]);
            seq[k] += 1;
            let region = if k.is_multiple_of(3) { "us" } else { "eu" };
            (Some(format!("k{k}")), v, vec![("region", region)])
        })
        .collect()
}

/// Asserts that for every key the sequence numbers run 0, 1, 2, ... without gap or reordering.
fn assert_key_order<'a>(values: impl Iterator<Item = &'a str>) -> usize {
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut n = 0;
    for v in values {
        let (k, s) = v.split_once(':').expect("k:seq");
        let s: usize = s.parse().unwrap();
        let want = next.entry(k.to_string()).or_insert(0);
        assert_eq!(s, *want, "key {k}: got {s}, expected {want}");
        *want += 1;
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_reach_mqtt_wildcard_subscribers_by_template_and_counts_show_it() {
    let kafka = Tansu::start();
    kafka.create_topic("orders.created", 3);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[kafka]]
name = "dc1"
bootstrap = "{}"
app_id = "shop"
[[kafka.source]]
name = "orders"
# A pattern: its partitions are read from the consumer's queue record by record (named topics,
# as in the other tests, are read in batches from their partitions' queues).
topics = ['^orders\.created$']
topic_template = "orders/{{header.region}}/{{key}}"
"#,
        kafka.bootstrap()
    );
    let n = node_with(dir.path(), "n1", &toml, &[]);
    let (_c, mut rx) = subscriber(&n, "us-reader", true, "orders/us/#").await;
    let records = keyed(600, 12);
    let us = records.iter().filter(|r| r.2[0].1 == "us").count();
    produce(&kafka.bootstrap(), "orders.created", &records).await;
    let got = receive(&mut rx, us, Duration::from_secs(30)).await;
    assert_eq!(got.len(), us, "exactly the us records, once each");
    for (topic, value) in &got {
        let key = value.split(':').next().unwrap();
        assert_eq!(topic, &format!("orders/us/{key}"), "template applied");
    }
    assert_key_order(got.iter().map(|(_, v)| v.as_str()));
    // Everything was consumed; only what someone wanted was forwarded.
    wait_until("source counters", Duration::from_secs(10), || {
        bridge(&n, "dc1", "orders").consumed == 600
    });
    let b = bridge(&n, "dc1", "orders");
    assert_eq!(b.state, "up", "{b:?}");
    assert_eq!(b.forwarded, us as u64, "{b:?}");
    assert_eq!(b.unrouted, (600 - us) as u64, "{b:?}");
    let (_, metrics) = http_get(n.http, "/metrics").unwrap();
    assert!(
        metrics.contains("meshgate_bridge_consumed_total{kind=\"kafka\",member=\"dc1\",name=\"orders\",role=\"source\"} 600"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_rest_events_land_in_kafka_with_key_headers_and_origin() {
    let kafka = Tansu::start();
    kafka.create_topic("mesh.sensors", 1);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[kafka]]
name = "dc1"
bootstrap = "{}"
[[kafka.sink]]
name = "sensors"
filter = "sensors/>"
topic_template = "mesh.{{level.0}}"
key_template = "{{level.1}}"
"#,
        kafka.bootstrap()
    );
    let n = node_with(dir.path(), "n1", &toml, &[]);
    for i in 0..50 {
        let out = common::mosquitto("mosquitto_pub", &n, "mqttv5")
            .args(["-q", "1", "-t", &format!("sensors/dev{}/temp", i % 5)])
            .args([
                "-m",
                &format!("mqtt-{i}"),
                "-D",
                "publish",
                "user-property",
                "unit",
                "C",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    for i in 0..50 {
        let (status, body) = http_request_with(
            n.http,
            "POST",
            &format!(
                "/v1/publish/sensors/dev{}/humidity?delivery=guaranteed",
                i % 5
            ),
            &[("ce-unit", "percent")],
            format!("rest-{i}").as_bytes(),
        )
        .unwrap();
        assert!(status / 100 == 2, "{status} {body}");
    }
    let recs = read_all(
        &kafka.bootstrap(),
        "mesh.sensors",
        1,
        100,
        Duration::from_secs(30),
    );
    assert_eq!(recs.len(), 100, "every event once");
    let by_value: BTreeMap<String, &Rec> = recs
        .iter()
        .map(|r| (String::from_utf8_lossy(&r.value).into_owned(), r))
        .collect();
    let m = by_value["mqtt-7"];
    assert_eq!(
        m.key.as_deref(),
        Some(&b"dev2"[..]),
        "key from the template"
    );
    assert_eq!(
        m.header("unit"),
        Some(&b"C"[..]),
        "MQTT 5 user property as a header"
    );
    let origin = String::from_utf8_lossy(m.header("meshgate-origin").expect("origin header"));
    assert!(origin.starts_with("n1/"), "{origin}");
    let r = by_value["rest-3"];
    assert_eq!(r.key.as_deref(), Some(&b"dev3"[..]));
    assert!(r.header("meshgate-origin").is_some());
    // In publish order for each publisher.
    let mqtt: Vec<usize> = recs
        .iter()
        .filter_map(|r| {
            String::from_utf8_lossy(&r.value)
                .strip_prefix("mqtt-")
                .map(|s| s.parse().unwrap())
        })
        .collect();
    assert_eq!(mqtt, (0..50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_to_cluster_b_through_two_nodes_carries_only_the_subscribed_subset_in_key_order()
{
    let (a, b) = (Tansu::start(), Tansu::start());
    a.create_topic("orders", 4);
    b.create_topic("orders.us", 2);
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["edge-a", "edge-b"]);
    let tls = dir.path().display().to_string();
    let (ma, mb) = (free_udp(), free_udp());
    let src = format!(
        r#"
[[kafka]]
name = "cluster-a"
bootstrap = "{}"
[[kafka.source]]
name = "orders"
topics = ["orders"]
topic_template = "orders/{{header.region}}/{{key}}"
"#,
        a.bootstrap()
    );
    let sink = format!(
        r#"
[[kafka]]
name = "cluster-b"
bootstrap = "{}"
[[kafka.sink]]
name = "us-orders"
filter = "orders/us/>"
topic_template = "orders.us"
"#,
        b.bootstrap()
    );
    let na = node_with(
        dir.path(),
        "edge-a",
        &src,
        &["--mesh", &ma.to_string(), "--tls-dir", &tls],
    );
    let nb = node_with(
        dir.path(),
        "edge-b",
        &sink,
        &[
            "--mesh",
            &mb.to_string(),
            "--tls-dir",
            &tls,
            "--peer",
            &ma.to_string(),
        ],
    );
    // edge-a knows edge-b's interest before the first record.
    wait_until("interest gossiped", Duration::from_secs(20), || {
        na.mesh_view()
            .registry
            .iter()
            .any(|e| e.node == "edge-b" && e.interest > 0)
    });
    let records = keyed(10_000, 30);
    let us = records.iter().filter(|r| r.2[0].1 == "us").count();
    produce(&a.bootstrap(), "orders", &records).await;
    let got = read_all(&b.bootstrap(), "orders.us", 2, us, Duration::from_secs(60));
    assert_eq!(got.len(), us, "only the subscribed subset, each once");
    for r in &got {
        let v = String::from_utf8_lossy(&r.value);
        let key = v.split(':').next().unwrap();
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()), "key kept");
        assert_eq!(r.header("region"), Some(&b"us"[..]), "headers kept");
    }
    // Per key, in order: a key lands in one partition of B (the sink partitions by key as
    // librdkafka does), and in it in the order of A.
    let mut by_part: BTreeMap<i32, Vec<&Rec>> = BTreeMap::new();
    let mut part_of_key: BTreeMap<&[u8], i32> = BTreeMap::new();
    for r in &got {
        by_part.entry(r.partition).or_default().push(r);
        let key = r.key.as_deref().expect("keyed");
        let first = *part_of_key.entry(key).or_insert(r.partition);
        assert_eq!(first, r.partition, "key {key:?} in two partitions");
    }
    assert_eq!(by_part.len(), 2, "the keys spread over both partitions");
    let mut n = 0;
    for recs in by_part.values_mut() {
        recs.sort_by_key(|r| r.offset);
        let values: Vec<String> = recs
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        n += assert_key_order(values.iter().map(String::as_str));
    }
    assert_eq!(n, us);
    // Only the wanted records crossed the link: the rest was dropped at the source's edge.
    let src = bridge(&na, "cluster-a", "orders");
    assert_eq!(src.consumed, 10_000, "{src:?}");
    assert_eq!(src.forwarded, us as u64, "{src:?}");
    let tx: u64 = na.mesh_view().links.iter().map(|l| l.tx_events).sum();
    assert!(
        tx >= us as u64 && tx < 10_000,
        "link carried {tx} events for {us} wanted"
    );
    let snk = bridge(&nb, "cluster-b", "us-orders");
    assert_eq!(snk.forwarded, us as u64, "{snk:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_keeps_events_while_its_kafka_is_down_and_delivers_them_when_it_returns() {
    let mut kafka = Restartable::start();
    kafka.tansu().create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[kafka]]
name = "dc1"
bootstrap = "{}"
[[kafka.sink]]
name = "out"
filter = "jobs/>"
topic_template = "out"
"#,
        kafka.bootstrap()
    );
    let n = node_with(dir.path(), "n1", &toml, &[]);
    let publish = |from: usize, to: usize| {
        for i in from..to {
            let (status, _) = http_request_with(
                n.http,
                "POST",
                "/v1/publish/jobs/a?delivery=guaranteed",
                &[],
                format!("job-{i}").as_bytes(),
            )
            .unwrap();
            assert_eq!(status, 200);
        }
    };
    publish(0, 200);
    assert_eq!(
        read_all(&kafka.bootstrap(), "out", 1, 200, Duration::from_secs(20)).len(),
        200
    );
    kafka.kill();
    // Accepted while Kafka is away: stored, shown as the sink's backlog and state.
    publish(200, 1200);
    wait_until(
        "sink shown down with an error",
        Duration::from_secs(20),
        || {
            let b = bridge(&n, "dc1", "out");
            b.state == "down" && b.last_error.is_some()
        },
    );
    let (_, backlog) = http_get(n.http, "/v1/backlog").unwrap();
    let backlog: BacklogView = serde_json::from_str(&backlog).unwrap();
    assert!(backlog.bridges[0].events > 0, "{backlog:?}");
    // Kafka comes back (empty: tansu keeps records in memory).
    kafka.bring_back();
    kafka.tansu().create_topic("out", 1);
    let got = read_all(&kafka.bootstrap(), "out", 1, 1000, Duration::from_secs(60));
    let seen: HashSet<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    let want: HashSet<String> = (200..1200).map(|i| format!("job-{i}")).collect();
    if seen != want {
        let log = n.log_text();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("Connection refused"))
            .collect();
        panic!(
            "{} of {} events arrived; node log:\n{}",
            seen.intersection(&want).count(),
            want.len(),
            tail[tail.len().saturating_sub(40)..].join("\n")
        );
    }
    wait_until("sink up, backlog drained", Duration::from_secs(20), || {
        let b = bridge(&n, "dc1", "out");
        b.state == "up" && b.backlog_events.unwrap_or(0) == 0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_of_a_source_skips_no_record() {
    let kafka = Tansu::start();
    kafka.create_topic("telemetry", 2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = format!(
        r#"
[[kafka]]
name = "dc1"
bootstrap = "{}"
[[kafka.source]]
name = "t"
topics = ["telemetry"]
topic_template = "telemetry/{{partition}}"
batch = 200
"#,
        kafka.bootstrap()
    );
    let data_s = data.display().to_string();
    let mut n = node_with(dir.path(), "n1", &toml, &["--data-dir", &data_s]);
    // A persistent subscriber: what arrives while the node is down waits in its session.
    let (c, mut rx) = subscriber(&n, "keeper", false, "telemetry/#").await;
    let total = 20_000;
    let records: Vec<_> = (0..total)
        .map(|i| (Some(format!("k{}", i % 7)), format!("r{i}"), vec![]))
        .collect();
    produce(&kafka.bootstrap(), "telemetry", &records).await;
    let mut seen: HashSet<String> = HashSet::new();
    while seen.len() < total / 4 {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Packet::Publish(p))) => {
                seen.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Some(_)) => {}
            _ => panic!("source stalled at {}", seen.len()),
        }
    }
    n.kill();
    drop(c);
    // What the client received (and so acknowledged) before the kill counts as delivered: the
    // node may have released it from the session for good. Read it up to the lost connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Packet::Publish(p))) => {
                seen.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Some(Packet::Disconnect)) => break,
            Ok(Some(_)) => {}
            _ => panic!("the first connection never reported its end"),
        }
    }
    drop(rx);
    let n = node_with(dir.path(), "n1", &toml, &["--data-dir", &data_s]);
    let (_c, mut rx) = subscriber(&n, "keeper", false, "telemetry/#").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < total {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Packet::Publish(p))) => {
                seen.insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let missing: Vec<usize> = (0..total)
        .filter(|i| !seen.contains(&format!("r{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records skipped, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_exchanging_the_same_topics_do_not_loop() {
    let (a, b) = (Tansu::start(), Tansu::start());
    a.create_topic("orders", 1);
    b.create_topic("orders", 1);
    let dir = tempfile::tempdir().unwrap();
    let cluster = |name: &str, t: &Tansu| {
        format!(
            r#"
[[kafka]]
name = "{name}"
bootstrap = "{}"
[[kafka.source]]
name = "in"
topics = ["orders"]
[[kafka.sink]]
name = "out"
filter = "orders"
"#,
            t.bootstrap()
        )
    };
    let toml = cluster("a", &a) + &cluster("b", &b);
    let n = node_with(dir.path(), "n1", &toml, &[]);
    wait_until("both sinks subscribed", Duration::from_secs(10), || {
        bridges(&n).iter().all(|b| b.state == "up")
    });
    let recs: Vec<_> = (0..100).map(|i| (None, format!("a{i}"), vec![])).collect();
    produce(&a.bootstrap(), "orders", &recs).await;
    assert_eq!(
        read_all(&b.bootstrap(), "orders", 1, 100, Duration::from_secs(20)).len(),
        100
    );
    // B's source read the copies and left them; A's sink did not write A's records back.
    wait_until("loops cut", Duration::from_secs(20), || {
        bridge(&n, "b", "in").skipped_loop == 100 && bridge(&n, "a", "out").skipped_loop == 100
    });
    let recs: Vec<_> = (0..50).map(|i| (None, format!("b{i}"), vec![])).collect();
    produce(&b.bootstrap(), "orders", &recs).await;
    let in_a = read_all(&a.bootstrap(), "orders", 1, 150, Duration::from_secs(20));
    let in_b = read_all(&b.bootstrap(), "orders", 1, 150, Duration::from_secs(20));
    assert_eq!(in_a.len(), 150, "A: its 100 and B's 50, nothing circled");
    assert_eq!(in_b.len(), 150, "B: A's 100 and its 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_republishes_an_offset_range_filtered_by_a_wildcard() {
    let kafka = Tansu::start();
    kafka.create_topic("orders", 1);
    let records = keyed(120, 6);
    produce_singly(&kafka.bootstrap(), "orders", &records).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[kafka]]
name = "dc1"
bootstrap = "{}"
[[kafka.source]]
name = "orders"
topics = ["orders"]
topic_template = "orders/{{header.region}}/{{key}}"
start = "latest"
"#,
        kafka.bootstrap()
    );
    let n = node_with(dir.path(), "n1", &toml, &[]);
    let (_c, mut rx) = subscriber(&n, "history", true, "orders/#").await;
    let body = r#"{"topic":"orders","filter":"orders/us/>","from_offset":30,"to_offset":89}"#;
    let (status, report) = http_request_with(
        n.http,
        "POST",
        "/v1/bridges/kafka/dc1/replay",
        &[],
        body.as_bytes(),
    )
    .unwrap_or_else(|| panic!("no answer: {}", n.log_text()));
    assert_eq!(status, 200, "{report}");
    let report: ReplayReport = serde_json::from_str(&report).unwrap();
    let want: Vec<String> = records[30..90]
        .iter()
        .filter(|r| r.2[0].1 == "us")
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(report.read, 60, "{report:?}");
    assert_eq!(report.published as usize, want.len(), "{report:?}");
    let got = receive(&mut rx, want.len(), Duration::from_secs(20)).await;
    let values: Vec<String> = got.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, want, "exactly the range's us records, in order");
    // The same from the command line.
    let out = std::process::Command::new(common::bin())
        .args([
            "kafka",
            "replay",
            "--http",
            &n.http.to_string(),
            "--cluster",
            "dc1",
        ])
        .args([
            "--topic",
            "orders",
            "--filter",
            "orders/eu/>",
            "--from-offset",
            "0",
            "--to-offset",
            "5",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cli: ReplayReport = serde_json::from_slice(&out.stdout).unwrap();
    let eu = records[..6].iter().filter(|r| r.2[0].1 == "eu").count();
    assert_eq!((cli.read, cli.published), (6, eu as u64), "{cli:?}");
    // Bad requests say why.
    let (status, body) = http_request_with(
        n.http,
        "POST",
        "/v1/bridges/kafka/nope/replay",
        &[],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_request_with(
        n.http,
        "POST",
        "/v1/bridges/kafka/dc1/replay",
        &[],
        br#"{"topic":"orders","filter":"a/>/b"}"#,
    )
    .unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("filter"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_down_at_start_is_shown_and_its_records_flow_once_it_is_up() {
    let port = free_tcp();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[kafka]]
name = "late"
bootstrap = "127.0.0.1:{port}"
[[kafka.source]]
name = "s"
topics = ["events"]
"#
    );
    let n = node_with(dir.path(), "n1", &toml, &[]);
    let (_c, mut rx) = subscriber(&n, "r", true, "events").await;
    wait_until("source shown down", Duration::from_secs(20), || {
        let b = bridge(&n, "late", "s");
        b.state == "down" && b.last_error.is_some()
    });
    let kafka = Tansu::start_on(port);
    kafka.create_topic("events", 1);
    let recs: Vec<_> = (0..20).map(|i| (None, format!("e{i}"), vec![])).collect();
    produce(&kafka.bootstrap(), "events", &recs).await;
    let got = receive(&mut rx, 20, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 20);
    wait_until("source up", Duration::from_secs(10), || {
        bridge(&n, "late", "s").state == "up"
    });
}

#[test]
fn a_bad_bridge_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[kafka]]\nname = \"dc1\"\nbootstrap = \"127.0.0.1:1\"\n[[kafka.source]]\nname = \"o\"\ntopics = [\"o\"]\ntopic_template = \"o/{regin}\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("kafka") && err.contains("unknown placeholder {regin}"),
        "{err}"
    );
}

/// Governance holds for bridges as for clients: a Kafka source publishes as its cluster's app
/// id (records on another owner's channel are refused and counted), and a Kafka sink reads as
/// its cluster's app id (a wildcard sink writes only the channels that app may read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_publish_and_read_as_their_app_id_under_governance() {
    let kafka = Tansu::start();
    kafka.create_topic("acme.sales._public.orders", 1);
    kafka.create_topic("acme.lifestyle.onboarding._public.user_signed_up", 1);
    kafka.create_topic("mesh.out", 1);
    let dir = tempfile::tempdir().unwrap();
    let specs = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/specs");
    // Two cluster entries on one broker: events a sink takes from the mesh are never written
    // back into the member they came from, and here the source's records should reach the sink.
    let toml = format!(
        r#"
[governance]
specs_dir = {specs:?}
[[http.tokens]]
token = "owner"
app_id = "acme.lifestyle.onboarding"
[[kafka]]
name = "in"
bootstrap = "{b}"
app_id = "acme.sales"
[[kafka.source]]
name = "orders"
topics = ["acme.sales._public.orders"]
topic_template = "acme/sales/_public/orders/{{header.region}}/{{key}}"
[[kafka.source]]
name = "foreign"
topics = ["acme.lifestyle.onboarding._public.user_signed_up"]
topic_template = "{{topic}}"
[[kafka]]
name = "out"
bootstrap = "{b}"
app_id = "acme.sales"
[[kafka.sink]]
name = "everything"
filter = "acme/>"
topic_template = "mesh.out"
"#,
        b = kafka.bootstrap()
    );
    let n = node_with(dir.path(), "n1", &toml, &[]);
    let orders: Vec<Record> = (0..20)
        .map(|i| {
            (
                Some(format!("s{}", i % 4)),
                format!(r#"{{"id": "o{i}", "total": {i}}}"#),
                vec![("region", "eu")],
            )
        })
        .collect();
    produce(&kafka.bootstrap(), "acme.sales._public.orders", &orders).await;
    let foreign: Vec<Record> = (0..10)
        .map(|i| (None, format!(r#"{{"fullName": "x{i}"}}"#), vec![]))
        .collect();
    produce(
        &kafka.bootstrap(),
        "acme.lifestyle.onboarding._public.user_signed_up",
        &foreign,
    )
    .await;
    wait_until(
        "the foreign records refused",
        Duration::from_secs(30),
        || bridge(&n, "in", "foreign").refused == 10,
    );
    // A client of the owner publishes on its public, private and protected channels: the sink
    // (acme.sales) may read only the public one.
    for (topic, body) in [
        (
            "acme/lifestyle/onboarding/_private/user_checkout",
            r#"{"id": "c1", "amount": 1}"#,
        ),
        ("acme/lifestyle/onboarding/_protected/purchased", "food"),
        (
            "acme/lifestyle/onboarding/_public/user_signed_up",
            r#"{"fullName": "Ada", "email": "a@example.com", "age": 36}"#,
        ),
    ] {
        let (status, resp) = http_request_with(
            n.http,
            "POST",
            &format!("/v1/publish/{topic}?delivery=guaranteed"),
            &[("Authorization", "Bearer owner")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{topic}: {resp}");
    }
    let recs = read_all(
        &kafka.bootstrap(),
        "mesh.out",
        1,
        21,
        Duration::from_secs(30),
    );
    let values: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(
        recs.len(),
        21,
        "20 orders and the public sign-up: {values:?}"
    );
    assert_eq!(
        values.iter().filter(|v| v.contains("\"total\"")).count(),
        20
    );
    assert!(values.iter().any(|v| v.contains("Ada")));
    assert!(
        !values
            .iter()
            .any(|v| v.contains("food") || v.contains("c1"))
    );
    let src = bridge(&n, "in", "orders");
    assert_eq!(src.refused, 0, "{src:?}");
    assert_eq!(src.forwarded, 20, "{src:?}");
}
