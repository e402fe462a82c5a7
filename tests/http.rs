//! The HTTP contract: REST publish, SSE subscribe, mesh view, health and metrics, and REST and
//! MQTT meeting on one topic tree.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{NodeProc, http_get, http_request, wait_until};

/// An SSE stream read line by line.
struct Sse {
    reader: BufReader<TcpStream>,
}

#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: String,
    id: String,
    data: String,
}

impl Sse {
    fn open(node: &NodeProc, query: &str) -> Sse {
        let mut s = TcpStream::connect(node.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /v1/subscribe?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let mut saw_type = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.to_lowercase()
                .starts_with("content-type: text/event-stream")
            {
                saw_type = true;
            }
            if h == "\r\n" {
                break;
            }
        }
        assert!(saw_type, "content type is text/event-stream");
        Sse { reader }
    }

    /// Next event, skipping keep-alive comments and chunk-size lines.
    fn next(&mut self) -> SseEvent {
        let mut ev = SseEvent::default();
        let mut data: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("sse read");
            assert!(n > 0, "stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                ev.event = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                ev.id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                data.push(v.to_string());
            } else if line.is_empty() && !ev.event.is_empty() {
                ev.data = data.join("\n");
                return ev;
            }
        }
    }
}

fn subscriptions(node: &NodeProc) -> u64 {
    node.node_info().map_or(0, |n| n.subscriptions)
}

#[test]
fn rest_publish_reaches_sse_subscriber_with_topic_id_and_data() {
    let node = NodeProc::start(&[]);
    let mut sse = Sse::open(&node, "filter=orders/*/us/%3E");
    wait_until("sse subscription", Duration::from_secs(10), || {
        subscriptions(&node) >= 1
    });
    for (t, body) in [
        ("orders/17/eu/x", "not for us"),
        ("orders/17/us/ny/store-4", "line one\nline two"),
        ("orders/17/us/ca", "{\"n\":1}"),
    ] {
        let (status, resp) = http_request(
            node.http,
            "POST",
            &format!("/v1/publish/{t}"),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
    }
    let a = sse.next();
    assert_eq!(a.event, "orders/17/us/ny/store-4");
    assert_eq!(a.data, "line one\nline two");
    assert_eq!(a.id.len(), 32);
    assert!(a.id.chars().all(|c| c.is_ascii_hexdigit()));
    let b = sse.next();
    assert_eq!(
        (b.event.as_str(), b.data.as_str()),
        ("orders/17/us/ca", "{\"n\":1}")
    );
    assert!(b.id > a.id, "ids are time-ordered");

    // Closing the stream removes its subscription.
    drop(sse);
    wait_until("subscription removed", Duration::from_secs(10), || {
        subscriptions(&node) == 0
    });
}

#[test]
fn mqtt_and_rest_share_one_topic_tree() {
    let node = NodeProc::start(&[]);
    // MQTT filter syntax is accepted by SSE too.
    let mut sse = Sse::open(&node, "filter=sensors/%2B/temp");
    wait_until("sse subscription", Duration::from_secs(10), || {
        subscriptions(&node) >= 1
    });
    let mut s = TcpStream::connect(node.mqtt).unwrap();
    s.write_all(&common::mqtt_connect_v4("mqtt-pub")).unwrap();
    // PUBLISH QoS 0 sensors/a/temp "19"
    let topic = b"sensors/a/temp";
    let mut p = vec![0x30, (2 + topic.len() + 2) as u8, 0, topic.len() as u8];
    p.extend_from_slice(topic);
    p.extend_from_slice(b"19");
    s.write_all(&p).unwrap();
    let e = sse.next();
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("sensors/a/temp", "19")
    );
}

#[test]
fn mesh_health_and_metrics_endpoints() {
    let node = NodeProc::start(&["--name", "store-042"]);
    let (status, body) = http_get(node.http, "/v1/mesh").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "store-042");
    assert_eq!(v["links"], serde_json::json!([]));
    assert_eq!(v["nodes"], serde_json::json!(["store-042"]));

    let (status, _) =
        http_request(node.http, "POST", "/v1/publish/metrics/probe", b"12345").unwrap();
    assert_eq!(status, 200);
    let (status, text) = http_get(node.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| l.starts_with("meshgate_events_published_total"))
        .unwrap_or_else(|| panic!("no published counter in:\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        text.contains("meshgate_events_published_bytes_total{protocol=\"http\"} 5"),
        "{text}"
    );
}

#[test]
fn retained_flag_over_rest() {
    let node = NodeProc::start(&[]);
    let (status, _) = http_request(
        node.http,
        "POST",
        "/v1/publish/cfg/mode?retain=true",
        b"eco",
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, body) = http_request(
        node.http,
        "POST",
        "/v1/publish/cfg/mode?retian=true",
        b"eco",
    )
    .unwrap();
    assert_eq!(status, 400, "unknown query parameters are refused: {body}");
    assert_eq!(node.node_info().unwrap().retained, 1);
}

#[test]
fn websocket_subscribes_and_publishes_with_json_messages() {
    use tungstenite::{Message, connect};
    let node = NodeProc::start(&[]);
    let url = format!("ws://{}/v1/ws?filter=chat/%3E", node.http);
    let (mut ws, _) = connect(url.as_str()).expect("websocket handshake");
    wait_until("ws subscription", Duration::from_secs(10), || {
        subscriptions(&node) >= 1
    });
    // A publish over the socket comes back to it (it matches its own filter).
    ws.send(Message::text(
        r#"{"topic": "chat/room-1", "payload": "hi"}"#,
    ))
    .unwrap();
    // A bad publish is answered with an error and the socket stays usable.
    ws.send(Message::text(r#"{"topic": "chat/*", "payload": "x"}"#))
        .unwrap();
    let (status, _) =
        http_request(node.http, "POST", "/v1/publish/chat/room-2", &[0xff, 0x00]).unwrap();
    assert_eq!(status, 200);
    let mut texts = Vec::new();
    while texts.len() < 3 {
        if let Message::Text(t) = ws.read().unwrap() {
            texts.push(serde_json::from_str::<serde_json::Value>(&t).unwrap());
        }
    }
    // The three arrive in an order that depends on scheduling; each must be there once.
    let find = |k: &str, v: &str| {
        let hits: Vec<_> = texts
            .iter()
            .filter(|t| t[k].as_str().is_some_and(|s| s.contains(v)))
            .collect();
        assert_eq!(hits.len(), 1, "{k}={v} in {texts:?}");
        hits[0].clone()
    };
    let own = find("topic", "chat/room-1");
    assert_eq!(own["payload"], "hi");
    assert_eq!(own["id"].as_str().unwrap().len(), 32);
    find("error", "invalid topic");
    assert_eq!(find("topic", "chat/room-2")["payload_base64"], "/wA=");
    // A bad filter is a plain JSON 400 before any upgrade.
    let (status, body) = http_get(node.http, "/v1/ws?filter=a/%3E/b").unwrap();
    assert_eq!(status, 400, "{body}");
}
