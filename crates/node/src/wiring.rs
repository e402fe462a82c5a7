//! The parts of a node made from its configuration: the router with its store, governance and
//! chargeback, the MQTT server with its restored sessions, and the mesh.

use std::sync::Arc;
use std::time::Duration;

use meshgate_auth::{StaticAuth, User};
use meshgate_broker::{Broker, BrokerConfig};
use meshgate_mesh::{Mesh, MeshConfig as LinkConfig};
use meshgate_mqtt::{MqttConfig, MqttServer};
use tokio::sync::watch;
use tracing::warn;

use crate::chargeback::Chargeback;
use crate::{CommitPolicy, Config, Governance, NodeError};

/// The router, with the store when the node keeps one.
pub(crate) fn broker(config: &Config) -> Result<Broker, NodeError> {
    let broker = Broker::new(BrokerConfig {
        node_name: config.node.name.clone(),
        max_payload_bytes: config.limits.max_payload_bytes,
        max_retained: config.limits.max_retained_messages,
        match_cache_slots: config.limits.match_cache_slots,
        stall: Duration::from_millis(config.flow.stall_ms),
    });
    if !config.store.enabled {
        return Ok(broker);
    }
    let st = &config.store;
    let window = Duration::from_millis(st.group_commit_ms);
    let commit = match st.commit {
        CommitPolicy::Group => meshgate_store::Commit::Group(window),
        CommitPolicy::Always => meshgate_store::Commit::Always,
        CommitPolicy::Os => meshgate_store::Commit::Os(window.max(Duration::from_millis(1))),
    };
    std::fs::create_dir_all(&config.node.data_dir).map_err(|e| NodeError::Store {
        dir: config.node.data_dir.clone(),
        msg: e.to_string(),
    })?;
    broker.set_disk(meshgate_store::Disk::new(commit, st.quota_bytes));
    Ok(broker)
}

/// The governance of the specs directory, put in charge of `broker`, when one is configured.
pub(crate) fn governance(
    config: &Config,
    broker: &Broker,
) -> Result<Option<Arc<Governance>>, NodeError> {
    let Some(dir) = &config.governance.specs_dir else {
        return Ok(None);
    };
    let g = Arc::new(Governance::load(dir).map_err(NodeError::Governance)?);
    g.govern(broker);
    Ok(Some(g))
}

/// The chargeback meter. Apps exist once clients authenticate (users, tokens) or specs name
/// them: from then on every app's traffic is metered. A node without either pays nothing.
pub(crate) fn chargeback(
    config: &Config,
    broker: &Broker,
    governance: &Option<Arc<Governance>>,
) -> Option<Arc<Chargeback>> {
    let apps =
        governance.is_some() || !config.mqtt.users.is_empty() || !config.http.tokens.is_empty();
    if !apps {
        return None;
    }
    let c = Arc::new(Chargeback::new(
        governance.clone(),
        config.chargeback.retention_minutes,
    ));
    broker.set_meter(c.clone());
    Some(c)
}

/// The MQTT server, with the stored sessions back (subscriptions in the trie, journals open)
/// when the node has a store.
pub(crate) fn mqtt(config: &Config, broker: &Broker) -> Result<MqttServer, NodeError> {
    let m = &config.mqtt;
    let users = m.users.iter().map(|u| User {
        username: u.username.clone(),
        secret: u.secret(),
        app_id: u.app_id.clone().unwrap_or_else(|| u.username.clone()),
    });
    let auth = Arc::new(StaticAuth::new(m.allow_anonymous, users));
    let mut mqtt = MqttServer::new(
        broker.clone(),
        auth,
        MqttConfig {
            max_packet_size: m.max_packet_size,
            max_queued_messages: m.max_queued_messages,
            max_queued_bytes: m.max_queued_bytes,
            slow_consumer: m.slow_consumer.into(),
            max_inflight: m.max_inflight,
            topic_alias_max: m.topic_alias_max,
            max_session_expiry_secs: m.max_session_expiry_secs,
            connect_timeout: Duration::from_secs(m.connect_timeout_secs),
            write_timeout: Duration::from_secs(m.write_timeout_secs),
        },
    );
    if broker.disk().is_some() {
        let dir = config.node.data_dir.join("sessions");
        mqtt = mqtt.with_store(dir.clone());
        mqtt.restore().map_err(|e| NodeError::Store {
            dir,
            msg: e.to_string(),
        })?;
    }
    Ok(mqtt)
}

/// The mesh, when the node has certificates (`--tls-dir`).
pub(crate) async fn mesh(
    config: &Config,
    broker: &Broker,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Mesh>, NodeError> {
    let m = &config.mesh;
    let Some(dir) = &m.tls_dir else {
        if !m.peers.is_empty() {
            warn!(
                peers = m.peers.len(),
                "--peer needs --tls-dir (the mesh CA and this node's certificate): running as a single node"
            );
        }
        return Ok(None);
    };
    let tls = meshgate_tls::load(dir, &config.node.name)?;
    let mut lc = LinkConfig::new(config.node.name.clone(), m.listen, tls);
    lc.role = m.role;
    lc.peers = m.peers.clone();
    lc.link_cost = m.link_cost;
    lc.gossip_interval = Duration::from_secs_f64(m.gossip_interval_secs);
    lc.idle_timeout = Duration::from_secs_f64(m.idle_timeout_secs);
    lc.expire_unreachable = Duration::from_secs(m.expire_unreachable_secs);
    lc.max_backoff = Duration::from_secs_f64(m.max_backoff_secs);
    lc.max_frame_bytes = m.max_frame_bytes;
    lc.link_queue = m.link_queue;
    lc.link_queue_bytes = m.link_queue_bytes;
    if config.store.enabled {
        lc.store_dir = Some(config.node.data_dir.join("mesh"));
    }
    Ok(Some(Mesh::start(broker.clone(), lc, shutdown).await?))
}
