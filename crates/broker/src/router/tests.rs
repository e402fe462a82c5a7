use super::*;
use crate::Delivery;

fn env(topic: &str, payload: &'static [u8]) -> Envelope {
    Envelope {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(payload),
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_reaches_matching_mailboxes_once() {
    let b = Broker::new(BrokerConfig::default());
    let a = b.new_mailbox(16);
    let c = b.new_mailbox(16);
    let mut ra = a.attach().await;
    let mut rc = c.attach().await;
    let f = |s: &str| Filter::parse(s).unwrap();
    let q1 = SubOptions {
        qos: 1,
        ..Default::default()
    };
    b.subscribe(&a, &f("orders/*/us/>"), None, SubOptions::default());
    b.subscribe(&a, &f("orders/17/us/ny"), None, q1);
    b.subscribe(&c, &f("orders/17/eu/>"), None, SubOptions::default());
    let mut p = b.publisher("test", None);
    let r = b.publish(&mut p, env("orders/17/us/ny", b"x"), 1).unwrap();
    assert_eq!(r.routed, 1, "one copy per session");
    let d = ra.try_recv().unwrap();
    assert_eq!(d.qos, 1, "highest QoS of the overlapping filters");
    assert!(ra.try_recv().is_err());
    assert!(rc.try_recv().is_err());
    assert!(
        b.publish(&mut p, env("orders/17/us", b"x"), 0)
            .unwrap()
            .routed
            == 0
    );
    assert!(matches!(
        b.publish(&mut p, env("orders/+/us", b"x"), 0),
        Err(PublishError::Topic(_))
    ));
}

#[tokio::test]
async fn a_batched_publisher_stores_each_sessions_share_at_flush_in_order() {
    use meshgate_store::{Commit, Disk};
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new(Commit::Group(std::time::Duration::ZERO), u64::MAX);
    let b = Broker::new(BrokerConfig::default());
    b.set_disk(disk.clone());
    let f = |s: &str| Filter::parse(s).unwrap();
    let q1 = SubOptions {
        qos: 1,
        ..Default::default()
    };
    // Two persistent sessions with journals (one with a queue of 2, so it overflows) and a
    // plain one.
    let mut journaled = Vec::new();
    for (i, cap) in [(0, 64), (1, 2)] {
        let mb = b.new_mailbox(cap);
        mb.set_persistent(true);
        let (j, _) = disk
            .open(dir.path().join(format!("s{i}")), 1 << 20)
            .unwrap();
        mb.set_journal(j);
        let rx = mb.attach().await;
        b.subscribe(&mb, &f("a/>"), None, q1);
        journaled.push((mb, rx));
    }
    let plain = b.new_mailbox(64);
    let mut plain_rx = plain.attach().await;
    b.subscribe(&plain, &f("a/>"), None, q1);
    // An offline persistent session: QoS 1 is held and stored, QoS 0 is refused (and not
    // counted) as without batching.
    let away = b.new_mailbox(64);
    away.set_persistent(true);
    let (j, _) = disk.open(dir.path().join("away"), 1 << 20).unwrap();
    away.set_journal(j);
    b.subscribe(&away, &f("a/>"), None, q1);
    let mut p = b.publisher("test", None);
    p.set_batched(true);
    // QoS 1, 0, 1, 0, 1: the QoS 0 events are held too, so each session keeps the order.
    for i in 0..5u8 {
        let qos = (i + 1) % 2;
        let r = b
            .publish(&mut p, env(&format!("a/{i}"), b"x"), qos)
            .unwrap();
        assert_eq!(r.routed, if qos == 1 { 4 } else { 3 });
    }
    assert!(p.holds());
    assert!(plain_rx.try_recv().is_err(), "held too, until the flush");
    for (mb, rx) in &mut journaled {
        assert!(rx.try_recv().is_err(), "held until the flush");
        assert_eq!(mb.journal().unwrap().bounds(), (1, 1), "nothing stored yet");
    }
    let ticket = b.flush_held(&mut p);
    assert!(ticket > 0 && !p.holds());
    let plain: Vec<String> = std::iter::from_fn(|| plain_rx.try_recv().ok())
        .map(|d| d.event.topic.clone())
        .collect();
    assert_eq!(
        plain,
        ["a/0", "a/1", "a/2", "a/3", "a/4"],
        "one batch, in order"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), disk.wait(ticket))
        .await
        .expect("the batch's cycle completes");
    // The roomy session got all five in order, QoS 1 ones numbered 1, 2, 3 in its journal.
    let (mb, rx) = &mut journaled[0];
    let got: Vec<(String, u8, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|d| (d.event.topic.clone(), d.qos, d.seq))
        .collect();
    let want = [
        ("a/0", 1, 1),
        ("a/1", 0, 0),
        ("a/2", 1, 2),
        ("a/3", 0, 0),
        ("a/4", 1, 3),
    ];
    let want: Vec<(String, u8, u64)> = want
        .iter()
        .map(|(t, q, s)| (t.to_string(), *q, *s))
        .collect();
    assert_eq!(got, want);
    let stored = mb.journal().unwrap().read_from(0, 10).unwrap();
    let topics: Vec<String> = stored
        .iter()
        .map(|(seq, r)| Delivery::decode(*seq, r).unwrap().event.topic.clone())
        .collect();
    assert_eq!(topics, ["a/0", "a/2", "a/4"]);
    // The small session (room for 2) took a/0 and a/1, and a/3 beyond its room: QoS 0 above
    // the high watermark is taken and makes the publisher wait, while its QoS 1 overflow
    // (a/2, a/4) stays in its journal, not dropped.
    assert!(p.is_congested(), "the publisher is told to wait");
    let (mb, rx) = &mut journaled[1];
    let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|d| d.event.topic.clone())
        .collect();
    assert_eq!(got, ["a/0", "a/1", "a/3"]);
    assert_eq!(mb.journal().unwrap().bounds(), (1, 4));
    assert_eq!(away.journal().unwrap().bounds(), (1, 4));
    assert_eq!(b.flush_held(&mut p), 0, "nothing held any more");
}

#[tokio::test]
async fn queue_group_gets_one_copy_and_retained_is_kept() {
    let b = Broker::new(BrokerConfig::default());
    let m: Vec<_> = (0..3).map(|_| b.new_mailbox(64)).collect();
    let mut rx = Vec::new();
    for mb in &m {
        rx.push(mb.attach().await);
        b.subscribe(
            mb,
            &Filter::parse("jobs/>").unwrap(),
            Some("w"),
            SubOptions::default(),
        );
    }
    let mut p = b.publisher("test", None);
    for _ in 0..30 {
        let mut e = env("jobs/a", b"j");
        e.retain = true;
        assert_eq!(b.publish(&mut p, e, 0).unwrap().routed, 1);
    }
    let counts: Vec<usize> = rx
        .iter_mut()
        .map(|r| std::iter::from_fn(|| r.try_recv().ok()).count())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 30);
    assert!(counts.iter().all(|&c| c == 10), "round robin: {counts:?}");
    assert_eq!(
        b.retained_matching(&Filter::parse("jobs/*").unwrap()).len(),
        1
    );
    b.publish(&mut p, env("jobs/a", b""), 0).unwrap();
    assert_eq!(
        b.retained_count(),
        1,
        "a plain empty publish leaves retained alone"
    );
    let mut clear = env("jobs/a", b"");
    clear.retain = true;
    b.publish(&mut p, clear, 0).unwrap();
    assert_eq!(b.retained_count(), 0, "an empty retained publish clears it");
}

#[tokio::test]
async fn offline_sessions_queue_qos1_only_when_persistent() {
    let b = Broker::new(BrokerConfig::default());
    let mb = b.new_mailbox(4);
    b.subscribe(
        &mb,
        &Filter::parse("t").unwrap(),
        None,
        SubOptions {
            qos: 1,
            ..Default::default()
        },
    );
    let mut p = b.publisher("test", None);
    assert_eq!(b.publish(&mut p, env("t", b"1"), 1).unwrap().routed, 0);
    mb.set_persistent(true);
    assert_eq!(b.publish(&mut p, env("t", b"2"), 1).unwrap().routed, 1);
    assert_eq!(b.publish(&mut p, env("t", b"3"), 0).unwrap().routed, 0);
    for _ in 0..10 {
        b.publish(&mut p, env("t", b"4"), 1).unwrap();
    }
    assert_eq!(mb.dropped(), 7, "capacity 4: 1 + 3 queued, 7 refused");
    let mut rx = mb.attach().await;
    assert_eq!(&rx.try_recv().unwrap().event.payload[..], b"2");
}
