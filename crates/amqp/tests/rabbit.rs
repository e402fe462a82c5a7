//! The AMQP bridge against a real RabbitMQ on 127.0.0.1:5672, started here (and left running)
//! when nothing listens there. Every test uses queues and exchanges (or a vhost) of its own.

mod support;

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use meshgate_bridge::origin::ORIGIN_HEADER;
use meshgate_bridge::{BridgeStatus, State};
use serde_json::json;

use support::*;

// ---------------------------------------------------------------------------------------------
// Tests

const N: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_moves_a_queue_into_the_mesh_in_order_and_acks_it() {
    ensure_rabbitmq();
    let node = Node::new();
    let (conn, ch) = client("%2f").await;
    let (ex, q) = (unique("ex-src"), unique("q-src"));
    topic_exchange(&ch, &ex).await;
    let mut rx = node.subscribe("orders/>").await;
    let cfg = config(json!({
        "name": "rabbit",
        "url": url("%2f"),
        "source": [{"name": "orders", "queue": q, "declare": true,
                    "bindings": [{"exchange": ex, "routing_key": "orders.#"}]}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let status = node.status("orders");
    // Up means declared and bound: nothing published from now on is lost.
    wait_until("the source to be up", 20, || status.state() == State::Up).await;

    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..N {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let mut h = FieldTable::default();
        h.insert("seq".into(), AMQPValue::LongLongInt(i as i64));
        let props = BasicProperties::default()
            .with_headers(h)
            .with_content_type("text/plain".into())
            .with_timestamp(1_700_000_000);
        publish(
            &ch,
            &ex,
            &format!("orders.{region}.{i}"),
            i.to_string().as_bytes(),
            props,
        )
        .await;
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());

    for i in 0..N {
        let d = next_event(&mut rx, 20).await;
        let region = if i % 2 == 0 { "eu" } else { "us" };
        assert_eq!(
            d.event.topic,
            format!("orders/{region}/{i}"),
            "event {i} in order"
        );
        assert_eq!(text(&d.event.payload), i.to_string());
        if i == 0 {
            let e = &d.event;
            assert_eq!(e.content_type, "text/plain");
            assert_eq!(e.timestamp_ms, 1_700_000_000_000);
            assert_eq!(e.publisher_app, "rabbit");
            let p = e.provenance.as_ref().expect("a provenance");
            assert_eq!((p.protocol.as_str(), p.member.as_str()), ("amqp", "rabbit"));
            assert!(
                e.headers
                    .iter()
                    .any(|h| h.name == "seq" && &h.value[..] == b"0")
            );
        }
    }
    eprintln!("{N} messages RabbitMQ -> mesh in {:?}", started.elapsed());
    // Stopped, the source closes its connection: anything unacknowledged would be ready again.
    node.stop(tasks).await;
    assert_eq!(ready(&ch, &q).await, 0, "every delivery acknowledged");
    assert!(rx.try_recv().is_err(), "each message once");
    assert_eq!(status.consumed.load(Ordering::Relaxed), N as u64);
    assert_eq!(status.forwarded.load(Ordering::Relaxed), N as u64);
    ch.queue_delete(q.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(ex.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_publishes_mesh_events_into_an_exchange_in_order() {
    ensure_rabbitmq();
    let node = Node::new();
    let (conn, ch) = client("%2f").await;
    let (ex, q) = (unique("ex-sink"), unique("q-sink"));
    topic_exchange(&ch, &ex).await;
    queue_bound(&ch, &q, &ex, "orders.us.*").await;
    let cfg = config(json!({
        "name": "rabbit",
        "url": url("%2f"),
        "sink": [{"name": "us", "filter": "orders/us/>", "exchange": ex}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let status = node.status("us");
    node.subscribed("orders/us/>").await;
    wait_until("the sink to be up", 20, || status.state() == State::Up).await;

    let started = Instant::now();
    for i in 0..N {
        node.publish(&format!("orders/us/{i}"), i.to_string());
        // Not the sink's: never reaches the exchange.
        node.publish(&format!("orders/eu/{i}"), i.to_string());
    }
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "test".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let origin = AMQPValue::LongString(format!("{NODE}/client/").into());
    for i in 0..N {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} within 20 s"))
            .expect("the consumer is open")
            .expect("a delivery");
        assert_eq!(
            d.routing_key.as_str(),
            format!("orders.us.{i}"),
            "message {i} in order"
        );
        assert_eq!(text(&d.data), i.to_string());
        let p = &d.properties;
        let headers = p.headers().as_ref().expect("headers").inner();
        assert_eq!(headers.get(ORIGIN_HEADER), Some(&origin));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("text/plain")
        );
    }
    eprintln!("{N} events mesh -> RabbitMQ in {:?}", started.elapsed());
    // Confirmed, so released from the journal.
    wait_until("the journal to be released", 10, || {
        status.backlog().is_some_and(|(n, _)| n == 0)
    })
    .await;
    assert_eq!(status.forwarded.load(Ordering::Relaxed), N as u64);
    node.stop(tasks).await;
    assert_eq!(ready(&ch, &q).await, 0, "nothing beyond the {N} messages");
    ch.queue_delete(q.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(ex.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_and_refused_messages_are_acked_but_not_published() {
    ensure_rabbitmq();
    let node = Node::new();
    let (conn, ch) = client("%2f").await;
    let q = unique("q-loop");
    let mut rx = node.subscribe(&q).await;
    let cfg = config(json!({
        "name": "rabbit",
        "url": url("%2f"),
        "source": [{"name": "loop", "queue": q, "declare": true}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let status = node.status("loop");
    wait_until("the source to be up", 20, || status.state() == State::Up).await;

    let mut h = FieldTable::default();
    h.insert(
        ORIGIN_HEADER.into(),
        AMQPValue::LongString("edge-1/kafka/k1".into()),
    );
    // Through the default exchange: the routing key is the queue's name.
    publish(
        &ch,
        "",
        &q,
        b"came from the mesh",
        BasicProperties::default().with_headers(h),
    )
    .await;
    // Larger than the node accepts (1 MiB): refused, logged, acknowledged.
    let big = vec![b'x'; (1 << 20) + 1];
    publish(&ch, "", &q, &big, BasicProperties::default()).await;
    publish(&ch, "", &q, b"fence", BasicProperties::default()).await;

    let d = next_event(&mut rx, 20).await;
    assert_eq!(
        text(&d.event.payload),
        "fence",
        "only the last message is published"
    );
    assert_eq!(d.event.topic, q, "no dots: the queue name is the one level");
    assert_eq!(status.skipped_loop.load(Ordering::Relaxed), 1);
    assert_eq!(status.refused.load(Ordering::Relaxed), 1);
    assert_eq!(status.consumed.load(Ordering::Relaxed), 3);
    node.stop(tasks).await;
    let left = ready(&ch, &q).await;
    assert_eq!(
        left, 0,
        "the skipped and refused messages were acknowledged too"
    );
    assert!(rx.try_recv().is_err());
    ch.queue_delete(q.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_batch_stays_in_the_journal_and_is_published_again() {
    ensure_rabbitmq();
    let node = Node::new();
    let (conn, ch) = client("%2f").await;
    let (ex, q) = (unique("ex-nack"), unique("q-nack"));
    topic_exchange(&ch, &ex).await;
    // Holds one message and nacks publishes beyond it.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let bind = QueueBindOptions::default();
    ch.queue_bind(
        q.as_str().into(),
        ex.as_str().into(),
        "#".into(),
        bind,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let cfg = config(json!({
        "name": "rabbit",
        "url": url("%2f"),
        "sink": [{"name": "full", "filter": "full/>", "exchange": ex}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let status = node.status("full");
    node.subscribed("full/>").await;
    for i in 0..3 {
        node.publish(&format!("full/{i}"), i.to_string());
    }
    wait_until("the sink to be down with the nack", 10, || {
        status.state() == State::Down
            && status.view().last_error.is_some_and(|e| e.contains("nack"))
    })
    .await;
    assert_eq!(
        status.backlog().map(|(n, _)| n),
        Some(3),
        "nothing released"
    );

    // Room again: the batch goes through, at least once each.
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "test".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = [false; 3];
    while seen.iter().any(|s| !s) {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a message within 20 s")
            .expect("the consumer is open")
            .expect("a delivery");
        seen[text(&d.data).parse::<usize>().unwrap()] = true;
    }
    wait_until("the journal to be released", 10, || {
        status.backlog().is_some_and(|(n, _)| n == 0)
    })
    .await;
    assert_eq!(status.state(), State::Up);
    assert!(status.retries.load(Ordering::Relaxed) >= 1);
    node.stop(tasks).await;
    ch.queue_delete(q.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(ex.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[test]
fn a_bad_template_is_refused_by_name() {
    let cfg = config(json!({
        "name": "rabbit",
        "url": url("%2f"),
        "source": [{"name": "orders", "queue": "q", "topic_template": "orders/{regin}/{topic}"}],
    }));
    let e = cfg.validate().unwrap_err();
    assert!(
        e.contains("source[0]") && e.contains("topic_template") && e.contains("{regin}"),
        "{e}"
    );
    let cfg = config(json!({
        "name": "rabbit",
        "url": url("%2f"),
        "sink": [{"name": "out", "filter": ">", "exchange": "x",
                  "routing_key_template": "mesh.{key}"}],
    }));
    let e = cfg.validate().unwrap_err();
    assert!(
        e.contains("routing_key_template") && e.contains("{key}"),
        "{e}"
    );
    // start() validates first: nothing runs with a bad configuration.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::new();
    let _guard = rt.enter();
    assert_eq!(
        meshgate_amqp::start(&node.ctx, &cfg).unwrap_err(),
        meshgate_bridge::StartError::Config(e)
    );
    assert!(node.ctx.bridges.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_away_the_bridge_is_down_and_the_journal_holds_the_events() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let node = Node::new();
    let cfg = config(json!({
        "name": "away",
        "url": format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        "source": [{"name": "in", "queue": "q"}],
        "sink": [{"name": "out", "filter": "away/>", "exchange": "x"}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let (source, sink) = (node.status("in"), node.status("out"));
    node.subscribed("away/>").await;
    for i in 0..100 {
        node.publish(&format!("away/{i}"), i.to_string());
    }
    let down = |s: &BridgeStatus| {
        s.state() == State::Down
            && s.view()
                .last_error
                .is_some_and(|e| e.contains(&format!("127.0.0.1:{port}")))
    };
    wait_until("the sink to be down with its error", 10, || down(&sink)).await;
    wait_until("the source to be down with its error", 10, || down(&source)).await;
    wait_until("the sink to have retried", 10, || {
        sink.retries.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(
        sink.backlog().map(|(n, _)| n),
        Some(100),
        "every event waits in the journal"
    );
    assert!(!sink.view().last_error.unwrap().contains("guest:guest"));
    node.stop(tasks).await;
    assert_eq!(sink.backlog().map(|(n, _)| n), Some(100), "and stays there");
    assert_eq!(sink.state(), State::Stopped);
}

/// `amqps://` is TLS: against RabbitMQ's plain port the handshake fails (lapin without a TLS
/// backend would speak plain AMQP there and succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_urls_speak_tls() {
    ensure_rabbitmq();
    let node = Node::new();
    let cfg = config(json!({
        "name": "tls",
        "url": format!("amqps://guest:guest@{RABBIT}/%2f"),
        "sink": [{"name": "out", "filter": "tls/>", "exchange": ""}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let sink = node.status("out");
    wait_until("the TLS handshake to fail", 15, || {
        sink.state() != State::Starting
    })
    .await;
    let view = sink.view();
    assert_eq!(sink.state(), State::Down, "{view:?}");
    eprintln!("amqps against a plain port: {:?}", view.last_error);
    node.stop(tasks).await;
}

/// Connections closed by the broker mid-stream: both directions reconnect and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_are_reopened_without_loss() {
    ensure_rabbitmq();
    let vhost = Vhost::new();
    let node = Node::new();
    let (conn, ch) = client(&vhost).await;
    let (qin, qout) = ("in-queue", "out-queue");
    queue_bound(&ch, qout, "amq.topic", "out.#").await;
    let mut rx = node.subscribe("in/>").await;
    let cfg = config(json!({
        "name": "rabbit",
        "url": url(&vhost),
        "source": [{"name": "in", "queue": qin, "declare": true, "prefetch": 50,
                    "bindings": [{"exchange": "amq.topic", "routing_key": "in.#"}]}],
        "sink": [{"name": "out", "filter": "out/>", "exchange": "amq.topic", "batch": 50}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let (source, sink) = (node.status("in"), node.status("out"));
    node.subscribed("out/>").await;
    wait_until("both up", 20, || {
        source.state() == State::Up && sink.state() == State::Up
    })
    .await;

    const M: usize = 2_000;
    let mut got_in = Vec::new();
    for i in 0..M / 2 {
        publish(
            &ch,
            "amq.topic",
            &format!("in.{i}"),
            i.to_string().as_bytes(),
            Default::default(),
        )
        .await;
        node.publish(&format!("out/{i}"), i.to_string());
    }
    while got_in.len() < M / 2 {
        got_in.push(
            text(&next_event(&mut rx, 20).await.event.payload)
                .parse::<usize>()
                .unwrap(),
        );
    }

    // Close the bridge's connections (named "meshgate ...") from the broker's side.
    // `list_connections` lists every vhost whatever `-p` says: filter on the vhost column, other
    // tests run beside this one.
    let list = ctl(&[
        "list_connections",
        "--no-table-headers",
        "vhost",
        "pid",
        "client_properties",
    ]);
    let ours = bridge_connections(&list, &vhost);
    assert_eq!(ours.len(), 2, "a connection per source and sink: {list}");
    for pid in &ours {
        ctl(&["close_connection", pid, "test closes it"]);
    }
    for i in M / 2..M {
        publish(
            &ch,
            "amq.topic",
            &format!("in.{i}"),
            i.to_string().as_bytes(),
            Default::default(),
        )
        .await;
        node.publish(&format!("out/{i}"), i.to_string());
    }

    // At least once, in order of first appearance.
    let mut seen = vec![false; M];
    for &i in &got_in {
        seen[i] = true;
    }
    let mut highest = got_in.last().copied().unwrap_or(0);
    while seen.iter().any(|s| !s) {
        let i: usize = text(&next_event(&mut rx, 20).await.event.payload)
            .parse()
            .unwrap();
        if !seen[i] {
            assert!(
                i > highest,
                "{i} arrived for the first time after {highest}"
            );
            seen[i] = true;
            highest = i;
        }
    }
    assert!(
        source.retries.load(Ordering::Relaxed) >= 1,
        "the source reconnected"
    );

    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(qout.into(), "test".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    let mut seen = vec![false; M];
    let mut highest = None;
    while seen.iter().any(|s| !s) {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a message within 20 s")
            .expect("the consumer is open")
            .expect("a delivery");
        let i: usize = text(&d.data).parse().unwrap();
        if !seen[i] {
            assert!(
                highest.is_none_or(|h| i > h),
                "{i} arrived for the first time after {highest:?}"
            );
            seen[i] = true;
            highest = Some(i);
        }
    }
    let now = ctl(&[
        "list_connections",
        "--no-table-headers",
        "vhost",
        "pid",
        "client_properties",
    ]);
    let again = bridge_connections(&now, &vhost);
    assert!(
        again.len() == 2 && again.iter().all(|p| !ours.contains(p)),
        "both reconnected: {ours:?} then {again:?}"
    );
    node.stop(tasks).await;
    let _ = conn.close(200, "done".into()).await;
}

/// Pids of the bridge's connections (named "meshgate ...") in `list_connections pid
/// client_properties` output.
/// Pids of the bridge's connections (named "meshgate ...") to `vhost` in a
/// `list_connections vhost pid client_properties` listing.
/// Acks wait for half the prefetch window to fill, but never for long: a few messages and then
/// silence are acknowledged anyway, while the consumer stays open (nothing would be redelivered
/// if it died now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_batch_is_acknowledged_without_waiting_for_more() {
    ensure_rabbitmq();
    let vhost = Vhost::new();
    let node = Node::new();
    let (conn, ch) = client(&vhost).await;
    let mut rx = node.subscribe("few/>").await;
    let cfg = config(json!({
        "name": "rabbit",
        "url": url(&vhost),
        "source": [{"name": "few", "queue": "few", "declare": true, "prefetch": 1000,
                    "bindings": [{"exchange": "amq.topic", "routing_key": "few.#"}]}],
    }));
    let tasks = meshgate_amqp::start(&node.ctx, &cfg).expect("started");
    let status = node.status("few");
    wait_until("the source to be up", 20, || status.state() == State::Up).await;
    for i in 0..3 {
        publish(
            &ch,
            "amq.topic",
            &format!("few.{i}"),
            b"x",
            Default::default(),
        )
        .await;
    }
    for i in 0..3 {
        assert_eq!(
            next_event(&mut rx, 20).await.event.topic,
            format!("few/{i}")
        );
    }
    let counts = || {
        ctl(&[
            "list_queues",
            "-p",
            &vhost,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
    };
    wait_until("the three acknowledged", 10, || {
        counts()
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["few", "0", "0"])
    })
    .await;
    assert_eq!(status.state(), State::Up, "acknowledged while consuming");
    node.stop(tasks).await;
    let _ = conn.close(200, "done".into()).await;
}

fn bridge_connections(list: &str, vhost: &str) -> Vec<String> {
    list.lines()
        .filter(|l| l.contains("meshgate "))
        .filter_map(|l| {
            let mut cols = l.split('\t');
            (cols.next() == Some(vhost)).then(|| cols.next()).flatten()
        })
        .map(String::from)
        .collect()
}
