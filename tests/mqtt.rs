//! MQTT 3.1.1 and 5 behaviour of a real `meshgate` process, driven by rumqttc.

mod common;

use std::time::Duration;

use common::{NodeProc, mqtt_v4 as v4};
use rumqttc::v5::AsyncClient as Client5;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn v5(node: &NodeProc, id: &str) -> (Client5, UnboundedReceiver<P5>) {
    common::mqtt_v5(node, id, None).await
}

/// Waits for the next packet accepted by `f`, skipping others.
async fn next<T, R>(rx: &mut UnboundedReceiver<T>, mut f: impl FnMut(T) -> Option<R>) -> R {
    timeout(WAIT, async {
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

async fn suback4(rx: &mut UnboundedReceiver<Packet>) -> rumqttc::SubAck {
    next(rx, |p| match p {
        Packet::SubAck(s) => Some(s),
        _ => None,
    })
    .await
}

async fn publish4(rx: &mut UnboundedReceiver<Packet>) -> rumqttc::Publish {
    next(rx, |p| match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    })
    .await
}

/// Publishes a sentinel and collects every topic received before it.
async fn topics_until_sentinel(
    publisher: &AsyncClient,
    rx: &mut UnboundedReceiver<Packet>,
    sentinel: &str,
) -> Vec<String> {
    publisher
        .publish(sentinel, QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let p = publish4(rx).await;
        if p.topic == sentinel {
            return got;
        }
        got.push(p.topic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_route_across_protocol_versions() {
    let node = NodeProc::start(&[]);
    let (s5, mut r5) = v5(&node, "sub5").await;
    let (s4, mut r4) = v4(&node, "sub4", true).await;
    s5.subscribe("orders/+/us/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    s5.subscribe("end", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    next(&mut r5, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
    next(&mut r5, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
    s4.subscribe_many([
        rumqttc::SubscribeFilter::new("orders/17/#".into(), QoS::AtLeastOnce),
        rumqttc::SubscribeFilter::new("end".into(), QoS::AtLeastOnce),
    ])
    .await
    .unwrap();
    suback4(&mut r4).await;

    let (p, _pr) = v4(&node, "pub", true).await;
    for t in [
        "orders/17/us/ny/store-4",
        "orders/17/eu/x",
        "orders/17/us",
        "orders/18/us/ca",
        "other",
    ] {
        p.publish(t, QoS::AtLeastOnce, false, t.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let got4 = topics_until_sentinel(&p, &mut r4, "end").await;
    assert_eq!(
        got4,
        ["orders/17/us/ny/store-4", "orders/17/eu/x", "orders/17/us"]
    );
    // The v5 subscriber: `#` also matches the parent level (orders/17/us).
    let mut got5 = Vec::new();
    loop {
        let pkt = next(&mut r5, |p| match p {
            P5::Publish(p) => Some(p),
            _ => None,
        })
        .await;
        let t = String::from_utf8(pkt.topic.to_vec()).unwrap();
        assert_eq!(
            &pkt.payload[..],
            if t == "end" {
                b"end".as_slice()
            } else {
                t.as_bytes()
            }
        );
        if t == "end" {
            break;
        }
        got5.push(t);
    }
    assert_eq!(
        got5,
        ["orders/17/us/ny/store-4", "orders/17/us", "orders/18/us/ca"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_late_subscriber_and_can_be_cleared() {
    let node = NodeProc::start(&[]);
    let (p, mut pr) = v4(&node, "pub", true).await;
    p.publish("cfg/store-4/mode", QoS::AtLeastOnce, true, "eco")
        .await
        .unwrap();
    next(&mut pr, |x| matches!(x, Packet::PubAck(_)).then_some(())).await;

    let (s, mut sr) = v4(&node, "late", true).await;
    s.subscribe("cfg/+/mode", QoS::AtLeastOnce).await.unwrap();
    let m = publish4(&mut sr).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.retain),
        ("cfg/store-4/mode", &b"eco"[..], true)
    );

    // An empty retained publish clears it: the next subscriber gets nothing retained.
    p.publish("cfg/store-4/mode", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    next(&mut pr, |x| matches!(x, Packet::PubAck(_)).then_some(())).await;
    let (s2, mut sr2) = v4(&node, "later", true).await;
    s2.subscribe("cfg/#", QoS::AtLeastOnce).await.unwrap();
    suback4(&mut sr2).await;
    let got = topics_until_sentinel(&p, &mut sr2, "cfg/zz-end").await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_subscriptions_and_queues_qos1() {
    let node = NodeProc::start(&[]);
    let (s, mut sr) = v4(&node, "keeper", false).await;
    s.subscribe("alerts/#", QoS::AtLeastOnce).await.unwrap();
    suback4(&mut sr).await;
    s.disconnect().await.unwrap();
    drop(sr);
    // Offline for real before anything is published: a connection still closing would take
    // (and its client acknowledge) what this test expects to be queued.
    common::wait_until("the keeper offline", WAIT, || {
        common::http_get(node.http, "/metrics")
            .is_some_and(|(_, m)| m.lines().any(|l| l.trim() == "meshgate_mqtt_connections 0"))
    });

    let (p, mut pr) = v4(&node, "pub", true).await;
    for i in 0..5 {
        p.publish(format!("alerts/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    for _ in 0..5 {
        next(&mut pr, |x| matches!(x, Packet::PubAck(_)).then_some(())).await;
    }
    // QoS 0 while offline is not queued. The QoS 1 publish after it on the same connection is
    // acknowledged only once the node has handled the QoS 0 one.
    p.publish("alerts/qos0", QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    p.publish("elsewhere", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    next(&mut pr, |x| matches!(x, Packet::PubAck(_)).then_some(())).await;

    let (_s, mut sr) = v4(&node, "keeper", false).await;
    let present = next(&mut sr, |x| match x {
        Packet::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await;
    assert!(present, "session resumed");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(publish4(&mut sr).await.topic);
    }
    assert_eq!(
        got,
        ["alerts/0", "alerts/1", "alerts/2", "alerts/3", "alerts/4"]
    );
    // The subscription itself survived: a live publish arrives too.
    let rest = topics_until_sentinel(&p, &mut sr, "alerts/live").await;
    assert!(
        rest.is_empty(),
        "QoS 0 events are not queued offline: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_is_published_when_a_client_vanishes() {
    let node = NodeProc::start(&[]);
    let (s, mut sr) = v4(&node, "watcher", true).await;
    s.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    suback4(&mut sr).await;

    let mut o = MqttOptions::new("doomed", "127.0.0.1", node.mqtt.port());
    o.set_last_will(rumqttc::LastWill::new(
        "status/doomed",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, mut ev) = AsyncClient::new(o, 10);
    // Connect, then drop the event loop: the socket closes without DISCONNECT.
    timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Packet::ConnAck(_))) = ev.poll().await {
                break;
            }
        }
    })
    .await
    .unwrap();
    drop(ev);
    drop(c);
    let m = publish4(&mut sr).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("status/doomed", &b"gone"[..])
    );

    // A clean DISCONNECT sends no will.
    let mut o = MqttOptions::new("polite", "127.0.0.1", node.mqtt.port());
    o.set_last_will(rumqttc::LastWill::new(
        "status/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, mut ev) = AsyncClient::new(o, 10);
    c.disconnect().await.unwrap();
    timeout(WAIT, async { while ev.poll().await.is_ok() {} })
        .await
        .unwrap();
    let (p, _pr) = v4(&node, "pub", true).await;
    let got = topics_until_sentinel(&p, &mut sr, "status/end").await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_gives_each_event_to_one_member() {
    let node = NodeProc::start(&[]);
    let mut rxs = Vec::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let (c, mut r) = v4(&node, &format!("worker-{i}"), true).await;
        c.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        suback4(&mut r).await;
        clients.push(c);
        rxs.push(r);
    }
    let (p, mut pr) = v4(&node, "pub", true).await;
    for i in 0..30 {
        p.publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, "j")
            .await
            .unwrap();
    }
    for _ in 0..30 {
        next(&mut pr, |x| matches!(x, Packet::PubAck(_)).then_some(())).await;
    }
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut per = Vec::new();
    for r in &mut rxs {
        let mut n = 0;
        while let Ok(Some(Packet::Publish(p))) = timeout(Duration::from_millis(500), r.recv()).await
        {
            assert!(seen.insert(p.topic), "an event reached two members");
            n += 1;
        }
        total += n;
        per.push(n);
    }
    assert_eq!(total, 30, "{per:?}");
    assert!(
        per.iter().all(|&n| n > 0),
        "every member gets work: {per:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_user_properties_topic_alias_and_no_local() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let node = NodeProc::start(&[]);
    let (s, mut sr) = v5(&node, "s5").await;
    s.subscribe("tele/#", Q5::AtLeastOnce).await.unwrap();
    next(&mut sr, |p| matches!(p, P5::SubAck(_)).then_some(())).await;

    let (p, mut pr) = v5(&node, "p5").await;
    next(&mut pr, |x| matches!(x, P5::ConnAck(_)).then_some(())).await;
    let props = PublishProperties {
        user_properties: vec![("site".into(), "store-4".into())],
        content_type: Some("text/plain".into()),
        topic_alias: Some(3),
        ..Default::default()
    };
    p.publish_with_properties("tele/temp", Q5::AtLeastOnce, false, "21.5", props)
        .await
        .unwrap();
    // Second publish uses only the alias.
    let alias_only = PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    };
    p.publish_with_properties("", Q5::AtLeastOnce, false, "21.7", alias_only)
        .await
        .unwrap();
    let get = |p: P5| match p {
        P5::Publish(p) => Some(p),
        _ => None,
    };
    let a = next(&mut sr, get).await;
    let props = a.properties.expect("properties");
    assert_eq!(
        props.user_properties,
        vec![("site".to_string(), "store-4".to_string())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    let b = next(&mut sr, get).await;
    assert_eq!(
        (&b.topic[..], &b.payload[..]),
        (&b"tele/temp"[..], &b"21.7"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_same_client_id_takes_over() {
    let node = NodeProc::start(&[]);
    let (_a, mut ar) = v4(&node, "twin", true).await;
    next(&mut ar, |x| matches!(x, Packet::ConnAck(_)).then_some(())).await;
    let (_b, mut br) = v4(&node, "twin", true).await;
    next(&mut br, |x| matches!(x, Packet::ConnAck(_)).then_some(())).await;
    // The first client's event loop ends (its connection was closed by the node).
    timeout(WAIT, async { while ar.recv().await.is_some() {} })
        .await
        .expect("first connection closed");
}
