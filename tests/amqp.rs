//! RabbitMQ as a mesh member through the real `meshgate` binary: messages of a queue reach
//! MQTT wildcard subscribers, MQTT publishes reach a RabbitMQ queue through an exchange. The
//! bridge's own tests (crates/amqp/tests) cover acks, confirms, loops and outages in detail.

mod common;
#[allow(dead_code, unused_imports)]
#[path = "../crates/amqp/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::{NodeProc, http_get, wait_until};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use rumqttc::{AsyncClient, Event, Packet, QoS};

fn node(dir: &std::path::Path, toml: &str) -> NodeProc {
    let file = dir.join("amqp.toml");
    std::fs::write(&file, toml).unwrap();
    NodeProc::start(&["--config", file.to_str().unwrap()])
}

fn state(n: &NodeProc, name: &str) -> String {
    let (_, body) = http_get(n.http, "/v1/bridges").unwrap();
    let v: Vec<meshgate_api::BridgeView> = serde_json::from_str(&body).unwrap();
    v.into_iter()
        .find(|b| b.name == name)
        .map(|b| b.state)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_and_mqtt_exchange_events_both_ways_through_a_node() {
    support::ensure_rabbitmq();
    let (_conn, ch) = support::client("%2f").await;
    let (ex, q_in, q_out) = (
        support::unique("mesh-ex"),
        support::unique("mesh-in"),
        support::unique("mesh-out"),
    );
    support::topic_exchange(&ch, &ex).await;
    // Messages for the mesh come from q_in; the sink's exchange routes `alerts.#` to q_out.
    support::queue_bound(&ch, &q_out, &ex, "alerts.#").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[amqp]]
name = "rabbit"
url = "{url}"
app_id = "plant"
[[amqp.source]]
name = "in"
queue = "{q_in}"
declare = true
bindings = [{{ exchange = "{ex}", routing_key = "orders.#" }}]
[[amqp.sink]]
name = "out"
filter = "alerts/>"
exchange = "{ex}"
"#,
        url = support::url("%2f"),
    );
    let n = node(dir.path(), &toml);
    wait_until("bridges up", Duration::from_secs(20), || {
        state(&n, "in") == "up" && state(&n, "out") == "up"
    });

    // RabbitMQ -> mesh -> MQTT subscriber on a wildcard.
    let mut o = rumqttc::MqttOptions::new("sub", "127.0.0.1", n.mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 1000);
    c.subscribe("orders/+/us", QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    let mut published = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 100 {
        let e = tokio::time::timeout_at(deadline, ev.poll())
            .await
            .expect("all us orders arrive")
            .unwrap();
        match e {
            Event::Incoming(Packet::SubAck(_)) if !published => {
                published = true;
                for i in 0..200 {
                    let region = if i % 2 == 0 { "us" } else { "eu" };
                    let key = format!("orders.{i}.{region}");
                    let body = format!("order-{i}");
                    support::publish(&ch, &ex, &key, body.as_bytes(), BasicProperties::default())
                        .await;
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                got.push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
            _ => {}
        }
    }
    let want: Vec<(String, String)> = (0..200)
        .step_by(2)
        .map(|i| (format!("orders/{i}/us"), format!("order-{i}")))
        .collect();
    assert_eq!(
        got, want,
        "the us orders, in queue order, with the routing key as topic"
    );

    // MQTT -> mesh -> RabbitMQ exchange -> q_out, routing key from the topic.
    for i in 0..50 {
        c.publish(
            format!("alerts/line{}/temp", i % 3),
            QoS::AtLeastOnce,
            false,
            format!("alert-{i}"),
        )
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            q_out.as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < 50 {
        // Keep the MQTT client's event loop turning so its publishes go out.
        let d = tokio::select! {
            d = consumer.next() => d,
            _ = ev.poll() => continue,
            _ = tokio::time::sleep_until(deadline + Duration::from_secs(30)) => None,
        };
        let d = d.expect("alerts reach RabbitMQ").unwrap();
        out.push((
            d.routing_key.to_string(),
            String::from_utf8_lossy(&d.data).into_owned(),
        ));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    for (i, (key, body)) in out.iter().enumerate() {
        assert_eq!(body, &format!("alert-{i}"), "in publish order");
        assert_eq!(key, &format!("alerts.line{}.temp", i % 3));
    }
}
