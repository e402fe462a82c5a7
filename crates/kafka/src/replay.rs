//! Replay: republish a time or offset range of a Kafka topic into the mesh, filtered by a
//! wildcard, for a subscriber that needs history. The records go through the same topic
//! template as the cluster's source of that topic (or `{topic}`), carry the `meshgate-replay`
//! header, and are published as guaranteed events; the call answers once they are durable.

use std::time::{Duration, Instant};

use meshgate_api::{ReplayReport, ReplayRequest};
use meshgate_bridge::{BridgeContext, BridgeStatus, Ingress, IngressError, origin};
use meshgate_proto::Header;
use meshgate_topic::Filter;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::source::Mapper;

/// Longest a replay reads before it answers with what it has.
const REPLAY_LIMIT: Duration = Duration::from_secs(120);
const META_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a replay on `cfg`'s cluster. Errors are for the caller (bad request, cluster away).
pub async fn replay(
    ctx: &BridgeContext,
    cfg: &KafkaConfig,
    req: ReplayRequest,
) -> Result<ReplayReport, String> {
    let filter = match &req.filter {
        Some(f) => Filter::parse(f).map_err(|e| format!("filter {f:?}: {e}"))?,
        None => Filter::parse(">").map_err(|e| e.to_string())?,
    };
    let template = cfg
        .source
        .iter()
        .find(|s| s.topics.iter().any(|t| t == &req.topic))
        .map_or("{topic}", |s| s.topic_template.as_str())
        .to_string();
    let status = BridgeStatus::new("kafka", &cfg.name, "replay", "source", req.topic.clone());
    let ingress = Ingress::new(&ctx.broker, "kafka", &cfg.name, cfg.app_id(), status);
    let cc = {
        let mut c = cfg.client_config();
        c.set("group.id", format!("{}.replay", cfg.app_id()));
        c.set("enable.auto.commit", "false");
        c.set("enable.partition.eof", "true");
        c
    };
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<DefaultConsumerContext> = cc
            .create()
            .map_err(|e| format!("cannot create a consumer: {e}"))?;
        run(&consumer, &handle, ingress, &req, &filter, &template)
    })
    .await
    .map_err(|e| format!("replay failed: {e}"))?
}

fn run(
    consumer: &BaseConsumer,
    handle: &tokio::runtime::Handle,
    mut ingress: Ingress,
    req: &ReplayRequest,
    filter: &Filter,
    template: &str,
) -> Result<ReplayReport, String> {
    let meta = consumer
        .fetch_metadata(Some(&req.topic), META_TIMEOUT)
        .map_err(|e| format!("cluster unreachable: {e}"))?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .find(|t| t.name() == req.topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let partitions: Vec<i32> = partitions
        .into_iter()
        .filter(|p| req.partition.is_none_or(|want| want == *p))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {:?} has no such partition", req.topic));
    }
    // Where each partition starts; it ends at `to_offset` or at its end as of the read
    // (librdkafka's end-of-partition event), whichever comes first.
    let by_time = match req.from_ms {
        Some(ms) => {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                let _ = tpl.add_partition_offset(&req.topic, *p, Offset::Offset(ms));
            }
            Some(
                consumer
                    .offsets_for_times(tpl, META_TIMEOUT)
                    .map_err(|e| format!("offsets for time: {e}"))?,
            )
        }
        None => None,
    };
    let mut tpl = TopicPartitionList::new();
    let mut open: Vec<i32> = Vec::new();
    for p in &partitions {
        let from_time = by_time
            .as_ref()
            .and_then(|t| t.find_partition(&req.topic, *p))
            .map(|e| e.offset());
        let start = match (req.from_offset, from_time) {
            // No record at or after the time: nothing to read in this partition.
            (_, Some(Offset::End)) => continue,
            (Some(o), Some(Offset::Offset(t))) => Offset::Offset(o.max(t)),
            (None, Some(Offset::Offset(t))) => Offset::Offset(t),
            (Some(o), _) => Offset::Offset(o),
            (None, _) => Offset::Beginning,
        };
        if let (Some(to), Offset::Offset(from)) = (req.to_offset, start)
            && from > to
        {
            continue;
        }
        let _ = tpl.add_partition_offset(&req.topic, *p, start);
        open.push(*p);
    }
    let mut report = ReplayReport {
        partitions: open.len() as u64,
        ..Default::default()
    };
    if open.is_empty() {
        return Ok(report);
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let mut mapper = Mapper::new(template)?;
    let deadline = Instant::now() + REPLAY_LIMIT;
    while !open.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                open.retain(|x| *x != p);
                continue;
            }
            Err(e) => return Err(format!("consume: {e}")),
        };
        if !open.contains(&m.partition()) {
            continue;
        }
        if let Some(to) = req.to_offset {
            if m.offset() > to {
                open.retain(|x| *x != m.partition());
                continue;
            }
            if m.offset() == to {
                open.retain(|x| *x != m.partition());
            }
        }
        let ts = m.timestamp().to_millis().unwrap_or(0);
        if req.to_ms.is_some_and(|to| ts > to) {
            // Timestamps may go back within a partition: read to the end offset anyway.
            continue;
        }
        report.read += 1;
        let Some(mut env) = mapper.envelope(&m) else {
            report.skipped_loop += 1;
            continue;
        };
        if !filter.matches(&env.topic) {
            report.filtered += 1;
            continue;
        }
        env.headers.push(Header {
            name: origin::REPLAY_HEADER.into(),
            value: "true".into(),
        });
        loop {
            match ingress.publish(env.clone()) {
                Ok(()) => report.published += 1,
                Err(IngressError::Refused(_)) => report.refused += 1,
                Err(IngressError::Full(e)) => {
                    if Instant::now() >= deadline {
                        return Err(format!("stopped at offset {}: {e}", m.offset()));
                    }
                    handle.block_on(ingress.durable());
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            break;
        }
    }
    handle.block_on(ingress.durable());
    Ok(report)
}
