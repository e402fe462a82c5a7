//! The admin API as the HTTP layer sees it: the node's parts behind `meshgate_http`'s view
//! functions and traits (metrics, catalog, chargeback, backlog, replay).

use std::sync::Arc;

use meshgate_api::{BacklogView, BridgeBacklog, StoreView};
use meshgate_broker::Broker;
use meshgate_mesh::Mesh;
use meshgate_mqtt::MqttServer;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::chargeback::Chargeback;
use crate::{Config, Governance};

/// The parts of a running node the admin API reads.
pub(crate) struct Parts<'a> {
    pub broker: &'a Broker,
    pub mesh: &'a Option<Mesh>,
    pub mqtt: &'a Arc<MqttServer>,
    pub bridges: &'a meshgate_bridge::Bridges,
    pub governance: &'a Option<Arc<Governance>>,
    pub chargeback: &'a Option<Arc<Chargeback>>,
}

/// `GET /metrics`: the gauges read at scrape time, then the Prometheus text.
pub(crate) fn metrics(p: &Parts<'_>, handle: PrometheusHandle) -> meshgate_http::MetricsRender {
    let (mesh, mqtt, disk) = (p.mesh.clone(), p.mqtt.clone(), p.broker.disk().cloned());
    let bridges = p.bridges.clone();
    Arc::new(move || {
        bridges.export_metrics();
        if let Some(m) = &mesh {
            m.export_metrics();
        }
        if let Some(d) = &disk {
            metrics::gauge!("meshgate_store_used_bytes").set(d.used_bytes() as f64);
            metrics::gauge!("meshgate_store_quota_bytes").set(d.max_bytes() as f64);
            metrics::gauge!("meshgate_store_commit_cycles").set(d.cycles() as f64);
            metrics::gauge!("meshgate_store_sync_errors").set(d.sync_errors() as f64);
            metrics::gauge!("meshgate_store_failed")
                .set(f64::from(u8::from(d.failure().is_some())));
            mqtt.backlog();
        }
        handle.render()
    })
}

/// `GET /v1/catalog` and its reload, on a governed node.
pub(crate) fn catalog(p: &Parts<'_>) -> Option<Arc<dyn meshgate_http::CatalogApi>> {
    let g = p.governance.clone()?;
    Some(Arc::new(CatalogAdmin {
        governance: g,
        broker: p.broker.clone(),
        chargeback: p.chargeback.clone(),
    }))
}

/// `GET /v1/chargeback`, on a node that meters.
pub(crate) fn chargeback(p: &Parts<'_>) -> Option<Arc<dyn meshgate_http::ChargebackApi>> {
    let c = p.chargeback.clone()?;
    Some(Arc::new(ChargebackAdmin(c)))
}

/// `GET /v1/backlog`, on a node with a store.
pub(crate) fn backlog(
    p: &Parts<'_>,
    config: &Config,
) -> Option<meshgate_http::ViewFn<BacklogView>> {
    let disk = p.broker.disk().cloned()?;
    let (mesh, mqtt, bridges) = (p.mesh.clone(), p.mqtt.clone(), p.bridges.clone());
    let commit = format!("{:?}", config.store.commit).to_lowercase();
    Some(Arc::new(move || BacklogView {
        store: Some(StoreView {
            used_bytes: disk.used_bytes(),
            quota_bytes: disk.max_bytes(),
            commit: commit.clone(),
            commit_cycles: disk.cycles(),
            sync_errors: disk.sync_errors(),
            failed: disk.failure().map(str::to_string),
        }),
        links: mesh
            .as_ref()
            .and_then(|m| m.backlog())
            .map(|g| g.queues)
            .unwrap_or_default(),
        sessions: mqtt.backlog(),
        bridges: bridges
            .list()
            .iter()
            .filter_map(|b| {
                b.backlog().map(|(events, bytes)| BridgeBacklog {
                    kind: b.kind.to_string(),
                    member: b.member.clone(),
                    name: b.name.clone(),
                    events,
                    bytes,
                })
            })
            .collect(),
    }))
}

/// `POST /v1/bridges/kafka/{cluster}/replay`, when the build has Kafka.
#[cfg(feature = "kafka")]
pub(crate) fn replay(
    config: &Config,
    bctx: &meshgate_bridge::BridgeContext,
) -> Option<meshgate_http::ReplayFn> {
    let clusters = Arc::new(config.kafka.clone());
    let bctx = bctx.clone();
    Some(Arc::new(
        move |cluster: String, req: meshgate_api::ReplayRequest| {
            let (clusters, bctx) = (clusters.clone(), bctx.clone());
            Box::pin(async move {
                let cfg = clusters
                    .iter()
                    .find(|c| c.name == cluster)
                    .ok_or((404, format!("no Kafka cluster named {cluster:?}")))?;
                meshgate_kafka::replay(&bctx, cfg, req)
                    .await
                    .map_err(|e| (502, e))
            })
        },
    ))
}

#[cfg(not(feature = "kafka"))]
pub(crate) fn replay(
    _config: &Config,
    _bctx: &meshgate_bridge::BridgeContext,
) -> Option<meshgate_http::ReplayFn> {
    None
}

/// The admin API's view of the governance catalog, with who subscribes and produces now.
struct CatalogAdmin {
    governance: Arc<Governance>,
    broker: Broker,
    chargeback: Option<Arc<Chargeback>>,
}

impl meshgate_http::CatalogApi for CatalogAdmin {
    fn view(&self) -> meshgate_api::CatalogView {
        let produced = self
            .chargeback
            .as_ref()
            .map(|c| c.produced_since(meshgate_broker::now_ms() / 1000 - 3600))
            .unwrap_or_default();
        self.governance.view(&self.broker.interest(), &produced)
    }

    fn reload(&self) -> Result<meshgate_api::ReloadOk, meshgate_api::ReloadRefused> {
        match self.governance.reload() {
            Ok(version) => Ok(meshgate_api::ReloadOk { version }),
            Err(problems) => Err(meshgate_api::ReloadRefused {
                error: "specs refused; the previous catalog stays in force".into(),
                problems,
            }),
        }
    }
}

/// The admin API's view of the chargeback store.
struct ChargebackAdmin(Arc<Chargeback>);

impl meshgate_http::ChargebackApi for ChargebackAdmin {
    fn rows(&self, from: Option<u64>, to: Option<u64>) -> meshgate_api::ChargebackView {
        self.0.rows(from, to)
    }
}
