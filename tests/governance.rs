//! Governance at runtime, end to end with the real binary: AsyncAPI specs decide who may publish
//! and read what, over MQTT and REST, wildcard subscriptions included (GOVERNANCE.md's worked
//! example with the SpecMesh README spec), and a reload takes effect without reconnecting.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{NodeProc, http_get, http_request_with, wait_until};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc::UnboundedReceiver;

const OWNER: &str = "acme.lifestyle.onboarding";
const GRANTED: &str = "some.other.domain.root";
const OUTSIDER: &str = "acme.outsider";
const SIGNED_UP: &str = "acme/lifestyle/onboarding/_public/user_signed_up";
const CHECKOUT: &str = "acme/lifestyle/onboarding/_private/user_checkout";
const PURCHASED: &str = "acme/lifestyle/onboarding/_protected/purchased";
const SIGNED_UP_OK: &str = r#"{"fullName": "Ada", "email": "ada@example.com", "age": 36}"#;
const CHECKOUT_OK: &str = r#"{"id": "c1", "amount": 3.5}"#;

/// The specs of crates/governance's fixtures plus an expired channel, in a fresh directory.
fn specs(dir: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/governance/tests/specs/mesh");
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    for sub in ["", "schema"] {
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    std::fs::write(
        dir.join("acme.old.yaml"),
        "asyncapi: '2.5.0'\nid: 'urn:acme.old'\nchannels:\n  _public.gone:\n    x-deprecated:\n      eol: '2020-01-01'\n    publish: {}\n",
    )
    .unwrap();
}

/// A node governed by `specs_dir`, with an MQTT user and a bearer token per app (name = app).
fn node(dir: &Path) -> NodeProc {
    node_with(dir, &[], &[])
}

/// [`node`] with extra arguments and environment.
fn node_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
    let specs_dir = dir.join("specs");
    if !specs_dir.exists() {
        specs(&specs_dir);
    }
    let mut toml = format!("[governance]\nspecs_dir = {:?}\n", specs_dir);
    for app in [
        OWNER,
        GRANTED,
        OUTSIDER,
        "acme.pos",
        "acme.old",
        "acme.sales",
    ] {
        // The owner's password and the outsider's token are stored hashed, as `meshgate passwd`
        // prints them; the others as written.
        let password = if app == OWNER {
            passwd(&format!("pw-{app}"), false)
        } else {
            format!("password = \"pw-{app}\"")
        };
        let token = if app == OUTSIDER {
            passwd(&format!("tok-{app}"), true)
        } else {
            format!("token = \"tok-{app}\"")
        };
        toml += &format!(
            "[[mqtt.users]]\nusername = {app:?}\n{password}\napp_id = {app:?}\n[[http.tokens]]\n{token}\napp_id = {app:?}\n"
        );
    }
    let file = dir.join("node.toml");
    std::fs::write(&file, toml).unwrap();
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend(extra);
    NodeProc::start_env(&args, env)
}

/// `meshgate passwd [--token]` with `secret` on stdin: the configuration line it prints.
fn passwd(secret: &str, token: bool) -> String {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("passwd");
    if token {
        cmd.arg("--token");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let want = if token {
        "token_sha256 = "
    } else {
        "password_hash = \"$argon2id$"
    };
    assert!(line.starts_with(want), "{line}");
    line
}

async fn client(node: &NodeProc, app: &str) -> (AsyncClient, UnboundedReceiver<Packet>) {
    let password = format!("pw-{app}");
    common::mqtt_v5(node, &format!("c-{app}"), Some((app, &password))).await
}

async fn next<R>(rx: &mut UnboundedReceiver<Packet>, mut f: impl FnMut(Packet) -> Option<R>) -> R {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let p = rx.recv().await.expect("client ended");
            if let Some(r) = f(p) {
                return r;
            }
        }
    })
    .await
    .expect("timed out waiting for a packet")
}

async fn suback(rx: &mut UnboundedReceiver<Packet>) -> Vec<SubscribeReasonCode> {
    next(rx, |p| match p {
        Packet::SubAck(s) => Some(s.return_codes),
        _ => None,
    })
    .await
}

async fn puback(rx: &mut UnboundedReceiver<Packet>) -> PubAckReason {
    next(rx, |p| match p {
        Packet::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await
}

/// Topics received until (and without) the topic `end`.
async fn topics_until(rx: &mut UnboundedReceiver<Packet>, end: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let t = next(rx, |p| match p {
            Packet::Publish(p) => Some(String::from_utf8_lossy(&p.topic).to_string()),
            _ => None,
        })
        .await;
        if t == end {
            return got;
        }
        got.push(t);
    }
}

/// REST publish as `app` (None: no token): (status, body).
fn rest_publish(node: &NodeProc, app: Option<&str>, topic: &str, body: &str) -> (u16, String) {
    let auth = app.map(|a| format!("Bearer tok-{a}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_request_with(
        node.http,
        "POST",
        &format!("/v1/publish/{topic}"),
        &headers,
        body.as_bytes(),
    )
    .expect("http answer")
}

/// An SSE subscription as `app`: the status line, then (if 200) the event topics.
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    fn open(node: &NodeProc, app: &str, filter: &str) -> Result<Sse, String> {
        let filter = filter.replace('#', "%23").replace('>', "%3E");
        let mut s = TcpStream::connect(node.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /v1/subscribe?filter={filter} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-{app}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        if !status.contains(" 200 ") {
            return Err(status);
        }
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                return Ok(Sse { reader });
            }
        }
    }

    fn topics_until(&mut self, end: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).expect("sse read") > 0);
            if let Some(t) = line.trim_end().strip_prefix("event: ") {
                if t == end {
                    return got;
                }
                got.push(t.to_string());
            }
        }
    }
}

fn subscriptions(node: &NodeProc) -> u64 {
    node.node_info().map_or(0, |n| n.subscriptions)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscribers_receive_exactly_what_their_app_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let mut subs = Vec::new();
    for app in [OWNER, GRANTED, OUTSIDER] {
        let (c, mut rx) = client(&node, app).await;
        c.subscribe("acme/lifestyle/onboarding/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(
            suback(&mut rx).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "{app}: a wildcard over the owner's tree is accepted"
        );
        subs.push((app, c, rx));
    }
    let mut sse: Vec<(&str, Sse)> = [OWNER, GRANTED, OUTSIDER]
        .into_iter()
        .map(|app| {
            let s = Sse::open(&node, app, "acme/lifestyle/onboarding/>").expect(app);
            (app, s)
        })
        .collect();
    // Three MQTT subscriptions of two filters each (`a/#` is `a` and `a/>`), three SSE.
    wait_until("subscriptions", Duration::from_secs(10), || {
        subscriptions(&node) >= 9
    });

    for (topic, body) in [
        (CHECKOUT, CHECKOUT_OK),
        (PURCHASED, "food"),
        (SIGNED_UP, SIGNED_UP_OK),
        // Not a catalog channel: nobody may publish it, nobody receives it.
        ("acme/lifestyle/onboarding/_public/unknown", "x"),
    ] {
        let (status, resp) = rest_publish(&node, Some(OWNER), topic, body);
        let want = if topic.ends_with("unknown") { 403 } else { 200 };
        assert_eq!(status, want, "{topic}: {resp}");
    }
    // The end marker: a second public event everyone may read.
    assert_eq!(
        rest_publish(&node, Some(OWNER), SIGNED_UP, SIGNED_UP_OK).0,
        200
    );

    let expect = |app: &str| -> Vec<String> {
        let v: &[&str] = match app {
            OWNER => &[CHECKOUT, PURCHASED],
            GRANTED => &[PURCHASED],
            _ => &[],
        };
        sorted(v.iter().map(|s| s.to_string()).collect())
    };
    for (app, _c, rx) in &mut subs {
        let got = topics_until(rx, SIGNED_UP).await;
        assert_eq!(sorted(got), expect(app), "MQTT subscriber of {app}");
    }
    for (app, s) in &mut sse {
        let got = s.topics_until(SIGNED_UP);
        assert_eq!(sorted(got), expect(app), "SSE subscriber of {app}");
    }

    // Literal subscriptions to what the app may not read are refused as a whole, alike for
    // private, protected without a grant, and unknown.
    let (c, mut rx) = client(&node, OUTSIDER).await;
    for filter in [
        CHECKOUT,
        PURCHASED,
        "acme/lifestyle/onboarding/_private/#",
        "acme/lifestyle/onboarding/_public/unknown",
    ] {
        c.subscribe(filter, QoS::AtMostOnce).await.unwrap();
        assert_eq!(
            suback(&mut rx).await,
            vec![SubscribeReasonCode::NotAuthorized],
            "{filter}"
        );
        let status = Sse::open(&node, OUTSIDER, filter).err().unwrap_or_default();
        assert!(status.contains(" 403 "), "SSE {filter}: {status}");
    }
    // Shared-subscription groups carry the app's name: another app's group is refused.
    c.subscribe(
        format!("$share/{GRANTED}.workers/acme/lifestyle/onboarding/#"),
        QoS::AtMostOnce,
    )
    .await
    .unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![SubscribeReasonCode::NotAuthorized]
    );
    c.subscribe(
        format!("$share/{OUTSIDER}.workers/acme/lifestyle/onboarding/#"),
        QoS::AtMostOnce,
    )
    .await
    .unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    // Segment-exact ownership: acme.user owns nothing of acme.userprops.
    let (c, mut rx) = client(&node, "acme.pos").await;
    c.subscribe("acme/userprops/_private/#", QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![SubscribeReasonCode::NotAuthorized]
    );
    // A wrong password for a hashed one is refused at CONNECT.
    let mut o = MqttOptions::new("c-wrong", "127.0.0.1", node.mqtt.port());
    o.set_credentials(OWNER, "pw-wrong");
    let (_c, mut ev) = AsyncClient::new(o, 10);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return format!("{:?}", a.code),
                Ok(_) => continue,
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
    // Without credentials: nothing (closed by default); with an unknown token: 401.
    assert_eq!(rest_publish(&node, None, SIGNED_UP, SIGNED_UP_OK).0, 403);
    let (status, _) = http_request_with(
        node.http,
        "POST",
        &format!("/v1/publish/{SIGNED_UP}"),
        &[("Authorization", "Bearer nope")],
        SIGNED_UP_OK.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 401);
    let metrics = http_get(node.http, "/metrics").unwrap().1;
    assert!(
        metrics.contains("meshgate_governance_refusals_total{app=\"acme.outsider\""),
        "{metrics}"
    );
    assert!(metrics.contains("meshgate_events_filtered_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_refused_with_the_reason_codes_of_governance() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (c, mut rx) = client(&node, OUTSIDER).await;
    // Not the owner, an unknown topic: the same answer.
    for topic in [SIGNED_UP, "acme/lifestyle/onboarding/_public/nope"] {
        c.publish(topic, QoS::AtLeastOnce, false, SIGNED_UP_OK)
            .await
            .unwrap();
        assert_eq!(
            puback(&mut rx).await,
            PubAckReason::NotAuthorized,
            "{topic}"
        );
        let (status, body) = rest_publish(&node, Some(OUTSIDER), topic, SIGNED_UP_OK);
        assert_eq!(
            (status, body.as_str()),
            (403, r#"{"error":"not authorized"}"#)
        );
    }
    // The owner with a payload that breaks the channel's schema: 0x99 / 422.
    let (c, mut rx) = client(&node, OWNER).await;
    c.publish(SIGNED_UP, QoS::AtLeastOnce, false, r#"{"fullName": 1}"#)
        .await
        .unwrap();
    assert_eq!(puback(&mut rx).await, PubAckReason::PayloadFormatInvalid);
    let (status, body) = rest_publish(&node, Some(OWNER), CHECKOUT, r#"{"id": "c1"}"#);
    assert_eq!(status, 422, "{body}");
    c.publish(SIGNED_UP, QoS::AtLeastOnce, false, SIGNED_UP_OK)
        .await
        .unwrap();
    assert_eq!(puback(&mut rx).await, PubAckReason::Success);
    // x-producers may write; an expired channel may not be written, and says why.
    let (status, body) = rest_publish(
        &node,
        Some("acme.pos"),
        "acme/sales/_public/orders/eu/s42",
        r#"{"id": "o1", "total": 9}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = rest_publish(&node, Some("acme.old"), "acme/old/_public/gone", "x");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("end of life on 2020-01-01"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_stops_delivery_without_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (c, mut rx) = client(&node, GRANTED).await;
    c.subscribe("acme/lifestyle/onboarding/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut rx).await;
    assert_eq!(rest_publish(&node, Some(OWNER), PURCHASED, "a").0, 200);
    assert_eq!(
        rest_publish(&node, Some(OWNER), SIGNED_UP, SIGNED_UP_OK).0,
        200
    );
    assert_eq!(topics_until(&mut rx, SIGNED_UP).await, vec![PURCHASED]);

    // A broken spec is refused and the catalog in force stays.
    let spec = dir.path().join("specs/acme.lifestyle.onboarding.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(dir.path().join("specs/broken.yaml"), "asyncapi: [").unwrap();
    let (status, body) =
        http_request_with(node.http, "POST", "/v1/catalog/reload", &[], b"").unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("broken.yaml:"), "{body}");
    std::fs::remove_file(dir.path().join("specs/broken.yaml")).unwrap();
    assert_eq!(rest_publish(&node, Some(OWNER), PURCHASED, "b").0, 200);
    assert_eq!(
        rest_publish(&node, Some(OWNER), SIGNED_UP, SIGNED_UP_OK).0,
        200
    );
    assert_eq!(topics_until(&mut rx, SIGNED_UP).await, vec![PURCHASED]);

    // The grant goes away: the same connection and subscription get nothing more of it.
    assert!(text.contains("grant-access:some.other.domain.root"));
    std::fs::write(
        &spec,
        text.replace("grant-access:some.other.domain.root", "human"),
    )
    .unwrap();
    let (status, body) =
        http_request_with(node.http, "POST", "/v1/catalog/reload", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(rest_publish(&node, Some(OWNER), PURCHASED, "c").0, 200);
    assert_eq!(
        rest_publish(&node, Some(OWNER), SIGNED_UP, SIGNED_UP_OK).0,
        200
    );
    assert_eq!(topics_until(&mut rx, SIGNED_UP).await, Vec::<String>::new());
    let catalog: meshgate_api::CatalogView =
        serde_json::from_str(&http_get(node.http, "/v1/catalog").unwrap().1).unwrap();
    // The live subscriber shows up on the channels its filter covers.
    let purchased = catalog
        .channels
        .iter()
        .find(|c| c.topic == PURCHASED)
        .unwrap();
    assert!(
        purchased
            .subscribers
            .iter()
            .any(|s| s.app.as_deref() == Some(GRANTED)),
        "{purchased:?}"
    );
    assert!(
        purchased
            .producers_last_hour
            .first()
            .is_some_and(|p| p.app == OWNER),
        "{purchased:?}"
    );
    // An app's export is a spec that validates again, with its three channels.
    let out = std::process::Command::new(common::bin())
        .args(["catalog", "export", "--app", OWNER, "--http"])
        .arg(node.http.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let exported = dir.path().join("exported");
    std::fs::create_dir_all(&exported).unwrap();
    std::fs::write(exported.join("onboarding.json"), &out.stdout).unwrap();
    let check = std::process::Command::new(common::bin())
        .args(["spec", "validate"])
        .arg(&exported)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        said.contains("1 data product(s), 3 channel(s): valid"),
        "{said}"
    );
    assert!(catalog.version >= 3, "{catalog:?}");
    assert!(
        catalog
            .channels
            .iter()
            .any(|c| c.topic == PURCHASED && c.grants.is_empty()),
        "{catalog:?}"
    );
}

/// The chargeback rows of `node` with `kind`, as (app, topic, peer) -> (messages, bytes).
fn charged(
    node: &NodeProc,
    kind: &str,
) -> std::collections::BTreeMap<(String, String, String), (u64, u64)> {
    let v: meshgate_api::ChargebackView =
        serde_json::from_str(&http_get(node.http, "/v1/chargeback").unwrap().1).unwrap();
    v.rows
        .into_iter()
        .filter(|r| r.kind == kind)
        .map(|r| {
            (
                (r.app, r.topic, r.peer.unwrap_or_default()),
                (r.messages, r.bytes),
            )
        })
        .collect()
}

/// Governed nodes `a` and `b` (b dials a) sharing the specs and certificates in `dir`.
fn two_nodes(dir: &Path) -> (NodeProc, NodeProc) {
    common::certs(dir, &["a", "b"]);
    let tls = dir.display().to_string();
    let env = [
        ("MESHGATE_MESH__GOSSIP_INTERVAL_SECS", "0.2"),
        ("MESHGATE_MESH__MAX_BACKOFF_SECS", "0.5"),
    ];
    let a = node_with(
        dir,
        &["--name", "a", "--mesh", "127.0.0.1:0", "--tls-dir", &tls],
        &env,
    );
    let peer = a.mesh.unwrap().to_string();
    let b = node_with(
        dir,
        &[
            "--name",
            "b",
            "--mesh",
            "127.0.0.1:0",
            "--tls-dir",
            &tls,
            "--peer",
            &peer,
        ],
        &env,
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chargeback_is_exact_across_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path());
    // The end marker: a public channel of another owner that both subscribers read.
    let end = "acme/sales/_public/legacy_orders";
    let mut subs = Vec::new();
    for app in [GRANTED, OUTSIDER] {
        let (c, mut rx) = client(&b, app).await;
        c.subscribe("acme/lifestyle/onboarding/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        suback(&mut rx).await;
        c.subscribe(end, QoS::AtLeastOnce).await.unwrap();
        suback(&mut rx).await;
        subs.push((app, c, rx));
    }
    // b's interest has reached a once a marker published at a arrives at b.
    for (_, _, rx) in &mut subs {
        let mut arrived = false;
        for _ in 0..100 {
            assert_eq!(rest_publish(&a, Some("acme.sales"), end, "probe").0, 200);
            if tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_ok()
            {
                arrived = true;
                break;
            }
        }
        assert!(arrived, "b's interest never reached a");
        // Drain the other probes until quiet.
        while tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_ok()
        {}
    }
    for (_, _, rx) in &mut subs {
        while tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_ok()
        {}
    }
    let before = (
        charged(&a, "produced"),
        charged(&a, "link"),
        charged(&b, "delivered"),
    );

    let workload = [
        (SIGNED_UP, SIGNED_UP_OK, 10u64),
        (PURCHASED, "food", 5),
        (CHECKOUT, CHECKOUT_OK, 3),
    ];
    for (topic, body, n) in workload {
        for _ in 0..n {
            assert_eq!(rest_publish(&a, Some(OWNER), topic, body).0, 200);
        }
    }
    assert_eq!(rest_publish(&a, Some("acme.sales"), end, "end").0, 200);
    for (app, _, rx) in &mut subs {
        let got = topics_until(rx, end).await;
        let want = if *app == GRANTED { 15 } else { 10 };
        assert_eq!(got.len(), want, "{app}: {got:?}");
    }

    let diff =
        |now: &std::collections::BTreeMap<(String, String, String), (u64, u64)>,
         then: &std::collections::BTreeMap<(String, String, String), (u64, u64)>| {
            now.iter()
                .filter(|((_, topic, _), _)| topic.starts_with("acme/lifestyle/"))
                .map(|(k, (m, b))| {
                    let (m0, b0) = then.get(k).copied().unwrap_or((0, 0));
                    (k.clone(), (m - m0, b - b0))
                })
                .filter(|(_, (m, _))| *m > 0)
                .collect::<std::collections::BTreeMap<_, _>>()
        };
    let key =
        |app: &str, topic: &str, peer: &str| (app.to_string(), topic.to_string(), peer.to_string());
    let (l1, l2, l3) = (
        SIGNED_UP_OK.len() as u64,
        "food".len() as u64,
        CHECKOUT_OK.len() as u64,
    );
    let produced_want: std::collections::BTreeMap<_, _> = [
        (key(OWNER, SIGNED_UP, ""), (10, 10 * l1)),
        (key(OWNER, PURCHASED, ""), (5, 5 * l2)),
        (key(OWNER, CHECKOUT, ""), (3, 3 * l3)),
    ]
    .into_iter()
    .collect();
    let delivered_want: std::collections::BTreeMap<_, _> = [
        (key(GRANTED, SIGNED_UP, ""), (10, 10 * l1)),
        (key(GRANTED, PURCHASED, ""), (5, 5 * l2)),
        (key(OUTSIDER, SIGNED_UP, ""), (10, 10 * l1)),
    ]
    .into_iter()
    .collect();
    wait_until("b's deliveries metered", Duration::from_secs(10), || {
        diff(&charged(&b, "delivered"), &before.2) == delivered_want
    });
    assert_eq!(diff(&charged(&a, "produced"), &before.0), produced_want);
    // The link to b carried every event b has interest in, on the owner's account; its bytes
    // are the events' encoded size: more than the payloads, at most what the link sent.
    let link = diff(&charged(&a, "link"), &before.1);
    let messages: Vec<(String, u64)> = link
        .iter()
        .map(|((app, topic, peer), (m, _))| {
            assert_eq!((app.as_str(), peer.as_str()), (OWNER, "b"));
            (topic.clone(), *m)
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            (CHECKOUT.to_string(), 3),
            (PURCHASED.to_string(), 5),
            (SIGNED_UP.to_string(), 10)
        ]
    );
    let link_bytes: u64 = link.values().map(|(_, b)| b).sum();
    assert!(link_bytes > 10 * l1 + 5 * l2 + 3 * l3, "{link:?}");
    // The CLI sums nodes into one CSV.
    let out = std::process::Command::new(common::bin())
        .args(["chargeback", "--csv", "--http"])
        .arg(a.http.to_string())
        .arg("--http")
        .arg(b.http.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("node,app,owner,topic,kind,peer,messages,bytes\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{},{OUTSIDER},{OWNER},{SIGNED_UP},delivered,,",
            b.http
        )),
        "{text}"
    );
}

#[test]
fn spec_validate_names_file_and_line_and_fails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = std::process::Command::new(common::bin())
        .args(["spec", "validate"])
        .arg(root.join("config/specs"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("2 data product(s), 7 channel(s): valid"));
    // A grant to a malformed app id on line 6, and a channel of another app's namespace.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "asyncapi: '2.5.0'\nid: 'urn:acme.shop'\nchannels:\n  _protected.orders:\n    publish:\n      tags: [{name: 'grant-access:Not An App'}]\n",
    )
    .unwrap();
    let bad = std::process::Command::new(common::bin())
        .args(["spec", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stdout).to_string();
    assert!(said.starts_with("bad.yaml:6: "), "{said}");
    // A removed channel breaks the consumers of the previous specs.
    let prev = tempfile::tempdir().unwrap();
    specs(prev.path());
    let next = tempfile::tempdir().unwrap();
    specs(next.path());
    std::fs::remove_file(next.path().join("acme.user.yaml")).unwrap();
    let compat = std::process::Command::new(common::bin())
        .args(["spec", "validate"])
        .arg(next.path())
        .arg("--previous")
        .arg(prev.path())
        .output()
        .unwrap();
    assert!(!compat.status.success());
    assert!(
        String::from_utf8_lossy(&compat.stdout).contains("acme.user"),
        "{compat:?}"
    );
}

fn link_tx_events(node: &NodeProc) -> u64 {
    node.mesh_view().links.iter().map(|l| l.tx_events).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_nobody_may_read_stays_home_until_a_grant_makes_it_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path());
    // The outsider's filter is accepted (no literal level names a forbidden scope) but covers
    // only channels it may not read: b keeps it to itself.
    let (c, mut rx) = client(&b, OUTSIDER).await;
    c.subscribe("acme/lifestyle/onboarding/+/purchased", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut rx).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // A readable subscription of another app on b, as a yardstick that interest does travel.
    let (g, mut grx) = client(&b, GRANTED).await;
    g.subscribe(PURCHASED, QoS::AtLeastOnce).await.unwrap();
    suback(&mut grx).await;
    wait_until(
        "b's readable interest at a",
        Duration::from_secs(20),
        || {
            let before = link_tx_events(&a);
            rest_publish(&a, Some(OWNER), PURCHASED, "probe");
            link_tx_events(&a) > before
        },
    );
    g.unsubscribe(PURCHASED).await.unwrap();
    // Once the yardstick's interest is withdrawn, a routes nothing towards b: the outsider's
    // interest was never announced.
    let remote = |topic, body| {
        let (status, answer) = rest_publish(&a, Some(OWNER), topic, body);
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str::<meshgate_api::PublishAnswer>(&answer)
            .unwrap()
            .remote
    };
    wait_until("the yardstick withdrawn", Duration::from_secs(20), || {
        remote(PURCHASED, "probe") == 0
    });
    assert_eq!(remote(CHECKOUT, CHECKOUT_OK), 0, "nothing leaves a for b");
    while tokio::time::timeout(Duration::from_millis(200), rx.recv())
        .await
        .is_ok()
    {}

    // A grant to the outsider, reloaded on both nodes: b announces the interest, and the same
    // subscription receives the newly readable channel without resubscribing.
    let spec = dir.path().join("specs/acme.lifestyle.onboarding.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace(
            "name: \"grant-access:some.other.domain.root\"",
            "name: \"grant-access:some.other.domain.root\",\n        name: \"grant-access:acme.outsider\"",
        ),
    )
    .unwrap();
    for n in [&a, &b] {
        let (status, body) =
            http_request_with(n.http, "POST", "/v1/catalog/reload", &[], b"").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            rest_publish(&a, Some(OWNER), PURCHASED, "now readable");
            if let Ok(Some(Packet::Publish(p))) =
                tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
            {
                return String::from_utf8_lossy(&p.topic).to_string();
            }
        }
    })
    .await
    .expect("the newly granted channel reached the outsider");
    assert_eq!(got, PURCHASED);
}

/// A mosquitto client over TLS with the client certificate of `app` (None: no certificate).
fn tls_client(cmd: &str, port: u16, certs: &Path, app: Option<&str>) -> std::process::Command {
    let mut c = std::process::Command::new(common::need(cmd));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .arg("--cafile")
        .arg(certs.join("ca.pem"))
        // The node's certificate names the node, not 127.0.0.1: the chain is checked, the
        // host name is not.
        .arg("--insecure");
    if let Some(app) = app {
        c.arg("--cert")
            .arg(certs.join(format!("{app}.pem")))
            .arg("--key")
            .arg(certs.join(format!("{app}.key")));
    }
    c
}

#[test]
fn client_certificates_are_identities_over_mqtt_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    common::certs(&certs, &["node1", OWNER, OUTSIDER]);
    let port = common::kafka::free_tcp();
    let specs_dir = dir.path().join("specs");
    specs(&specs_dir);
    let toml = format!(
        "[governance]\nspecs_dir = {specs_dir:?}\n[mqtt]\nallow_anonymous = false\ntls_listen = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n",
        certs.join("node1.pem"),
        certs.join("node1.key"),
        certs.join("ca.pem"),
    );
    let file = dir.path().join("node.toml");
    std::fs::write(&file, toml).unwrap();
    let node = NodeProc::start(&["--config", file.to_str().unwrap()]);

    // The outsider (by its certificate) subscribes to the owner's whole tree over TLS.
    let sub = tls_client("mosquitto_sub", port, &certs, Some(OUTSIDER))
        .args([
            "-t",
            "acme/lifestyle/onboarding/#",
            "-C",
            "1",
            "-v",
            "-W",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the TLS subscription", Duration::from_secs(20), || {
        subscriptions(&node) >= 2
    });
    // The owner (by its certificate, with no user name) publishes a private and a public event.
    for (topic, body) in [(CHECKOUT, CHECKOUT_OK), (SIGNED_UP, SIGNED_UP_OK)] {
        let out = tls_client("mosquitto_pub", port, &certs, Some(OWNER))
            .args(["-q", "1", "-t", topic, "-m", body])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = sub.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        said.trim(),
        format!("{SIGNED_UP} {SIGNED_UP_OK}"),
        "only the public event"
    );
    // The certificate is the identity: the owner's events are metered to it.
    let rows = charged(&node, "produced");
    assert_eq!(
        rows.get(&(OWNER.to_string(), SIGNED_UP.to_string(), String::new())),
        Some(&(1, SIGNED_UP_OK.len() as u64)),
        "{rows:?}"
    );
    // Without a client certificate the TLS handshake is refused.
    let out = tls_client("mosquitto_pub", port, &certs, None)
        .args(["-q", "1", "-t", SIGNED_UP, "-m", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

/// A WebSocket request for `filter` (URL-encoded) with `app`'s bearer token.
fn ws_request(node: &NodeProc, app: &str, filter: &str) -> tungstenite::handshake::client::Request {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/ws?filter={filter}", node.http)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer tok-{app}").parse().unwrap(),
    );
    req
}

#[test]
fn websocket_clients_are_governed_like_mqtt_and_sse() {
    use tungstenite::{Message, connect};
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let (mut ws, _) = connect(ws_request(&node, OUTSIDER, "acme/lifestyle/onboarding/%3E"))
        .expect("websocket handshake");
    wait_until("ws subscription", Duration::from_secs(10), || {
        subscriptions(&node) >= 1
    });
    // The outsider may not write the owner's channel: an error on the socket, which stays up.
    ws.send(Message::text(format!(
        r#"{{"topic": "{SIGNED_UP}", "payload": "x"}}"#
    )))
    .unwrap();
    // The owner's private and public events: only the public one reaches the outsider.
    for (topic, body) in [(CHECKOUT, CHECKOUT_OK), (SIGNED_UP, SIGNED_UP_OK)] {
        assert_eq!(rest_publish(&node, Some(OWNER), topic, body).0, 200);
    }
    let mut texts = Vec::new();
    while texts.len() < 2 {
        if let Message::Text(t) = ws.read().unwrap() {
            texts.push(serde_json::from_str::<serde_json::Value>(&t).unwrap());
        }
    }
    assert!(
        texts.iter().any(|t| t["error"] == "not authorized"),
        "{texts:?}"
    );
    let events: Vec<&str> = texts.iter().filter_map(|t| t["topic"].as_str()).collect();
    assert_eq!(events, vec![SIGNED_UP], "{texts:?}");
    // A filter naming the owner's private scope is refused before any upgrade: 403.
    match connect(ws_request(
        &node,
        OUTSIDER,
        "acme/lifestyle/onboarding/_private/%3E",
    )) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a 403 refusal, got {:?}", other.map(|_| ())),
    }
}
