//! Wiring of a meshgate node: loads the configuration, binds the listeners, starts the tasks,
//! and shuts them down. Holds no routing or protocol logic of its own.

mod chargeback;
mod config;
mod governance;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meshgate_api::{BacklogView, BridgeBacklog, StoreView};
use meshgate_auth::{StaticAuth, User};
use meshgate_broker::{Broker, BrokerConfig};
use meshgate_http::HttpState;
use meshgate_mesh::{Mesh, MeshConfig as LinkConfig, MeshError, TlsError};
use meshgate_mqtt::{MqttConfig, MqttServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{CommitPolicy, Config, ConfigError, LogFormat, Overrides};
pub use governance::Governance;

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A listener could not bind its address.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address it tried.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The mesh certificates could not be loaded.
    #[error("mesh certificates: {0}")]
    Tls(#[from] TlsError),
    /// The mesh could not start.
    #[error("{0}")]
    Mesh(#[from] MeshError),
    /// A bridge (Kafka, AMQP) could not start.
    #[error("bridge: {0}")]
    Bridge(#[from] meshgate_bridge::StartError),
    /// The governance specs are refused (every problem, with file and line).
    #[error("governance specs refused:\n{}", .0.join("\n"))]
    Governance(Vec<String>),
    /// The data directory cannot be used.
    #[error("data directory {dir}: {msg}")]
    Store {
        /// The directory.
        dir: std::path::PathBuf,
        /// What failed.
        msg: String,
    },
}

/// A running node.
pub struct Node {
    broker: Broker,
    mqtt_addr: SocketAddr,
    http_addr: SocketAddr,
    mesh: Option<Mesh>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The process-wide Prometheus recorder (the `metrics` facade allows one per process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then that one gets the series and
            // /metrics shows what this one has (nothing), which the operator will notice.
            if metrics::set_global_recorder(recorder).is_err() {
                warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

impl Node {
    /// Binds every listener, then starts serving. Fails fast, before anything is served, if an
    /// address is taken.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let metrics = metrics_handle();
        let broker = Broker::new(BrokerConfig {
            node_name: config.node.name.clone(),
            max_payload_bytes: config.limits.max_payload_bytes,
            max_retained: config.limits.max_retained_messages,
            match_cache_slots: config.limits.match_cache_slots,
        });
        if config.store.enabled {
            let st = &config.store;
            let window = Duration::from_millis(st.group_commit_ms);
            let commit = match st.commit {
                CommitPolicy::Group => meshgate_store::Commit::Group(window),
                CommitPolicy::Always => meshgate_store::Commit::Always,
                CommitPolicy::Os => {
                    meshgate_store::Commit::Os(window.max(Duration::from_millis(1)))
                }
            };
            std::fs::create_dir_all(&config.node.data_dir).map_err(|e| NodeError::Store {
                dir: config.node.data_dir.clone(),
                msg: e.to_string(),
            })?;
            broker.set_disk(meshgate_store::Disk::new(commit, st.quota_bytes));
        }
        // Governance before any client: publishes, subscriptions and deliveries are checked
        // from the first connection.
        let governance = match &config.governance.specs_dir {
            Some(dir) => {
                let g = Arc::new(Governance::load(dir).map_err(NodeError::Governance)?);
                g.govern(&broker);
                Some(g)
            }
            None => None,
        };
        // Apps exist once clients authenticate (users, tokens) or specs name them: from then on
        // every app's traffic is metered. A node without either pays nothing for it.
        let chargeback = (governance.is_some()
            || !config.mqtt.users.is_empty()
            || !config.http.tokens.is_empty())
        .then(|| {
            let c = Arc::new(chargeback::Chargeback::new(
                governance.clone(),
                config.chargeback.retention_minutes,
            ));
            broker.set_meter(c.clone());
            c
        });
        let mqtt_l = bind("MQTT", config.mqtt.listen).await?;
        let mqtt_tls = match (
            &config.mqtt.tls_listen,
            &config.mqtt.tls_cert,
            &config.mqtt.tls_key,
        ) {
            (Some(addr), Some(cert), Some(key)) => {
                let tls =
                    meshgate_tls::client_facing(cert, key, config.mqtt.tls_client_ca.as_deref())?;
                Some((bind("MQTT over TLS", *addr).await?, tls))
            }
            _ => None,
        };
        let http_l = bind("HTTP", config.http.listen).await?;
        let mqtt_addr = mqtt_l.local_addr().unwrap_or(config.mqtt.listen);
        let http_addr = http_l.local_addr().unwrap_or(config.http.listen);
        let (shutdown, rx) = watch::channel(false);
        let users = config.mqtt.users.iter().map(|u| User {
            username: u.username.clone(),
            secret: u.secret(),
            app_id: u.app_id.clone().unwrap_or_else(|| u.username.clone()),
        });
        let auth = Arc::new(StaticAuth::new(config.mqtt.allow_anonymous, users));
        let m = &config.mqtt;
        let mut mqtt = MqttServer::new(
            broker.clone(),
            auth,
            MqttConfig {
                max_packet_size: m.max_packet_size,
                max_queued_messages: m.max_queued_messages,
                max_inflight: m.max_inflight,
                topic_alias_max: m.topic_alias_max,
                max_session_expiry_secs: m.max_session_expiry_secs,
                connect_timeout: Duration::from_secs(m.connect_timeout_secs),
                write_timeout: Duration::from_secs(m.write_timeout_secs),
            },
        );
        // Persistent sessions come back (subscriptions in the trie, journals open) before the
        // mesh starts, so their interest is advertised from the first gossip.
        if broker.disk().is_some() {
            mqtt = mqtt.with_store(config.node.data_dir.join("sessions"));
            mqtt.restore().map_err(|e| NodeError::Store {
                dir: config.node.data_dir.join("sessions"),
                msg: e.to_string(),
            })?;
        }
        let mqtt = Arc::new(mqtt);

        let mesh = match &config.mesh.tls_dir {
            Some(dir) => {
                let m = &config.mesh;
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
                if config.store.enabled {
                    lc.store_dir = Some(config.node.data_dir.join("mesh"));
                }
                Some(Mesh::start(broker.clone(), lc, rx.clone()).await?)
            }
            None => {
                if !config.mesh.peers.is_empty() {
                    warn!(
                        peers = config.mesh.peers.len(),
                        "--peer needs --tls-dir (the mesh CA and this node's certificate): running as a single node"
                    );
                }
                None
            }
        };

        let mut tasks = Vec::new();
        if let Some(g) = governance.clone() {
            tasks.push(tokio::spawn(reload_on_sighup(g, rx.clone())));
        }
        // Bridges start once the mesh runs, so their sinks' interest is advertised at once.
        let bridges = meshgate_bridge::Bridges::default();
        let bctx = meshgate_bridge::BridgeContext {
            broker: broker.clone(),
            node: config.node.name.clone(),
            dir: broker
                .disk()
                .is_some()
                .then(|| config.node.data_dir.join("bridges")),
            bridges: bridges.clone(),
            shutdown: rx.clone(),
        };
        #[cfg(feature = "kafka")]
        for k in &config.kafka {
            tasks.extend(meshgate_kafka::start(&bctx, k).map_err(NodeError::Bridge)?);
        }
        #[cfg(feature = "amqp")]
        for a in &config.amqp {
            tasks.extend(meshgate_amqp::start(&bctx, a).map_err(NodeError::Bridge)?);
        }
        {
            let mqtt = mqtt.clone();
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move { mqtt.serve(mqtt_l, rx).await }));
        }
        if let Some((l, tls)) = mqtt_tls {
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, client_certificates = config.mqtt.tls_client_ca.is_some(), "serving MQTT over TLS");
            }
            let mqtt = mqtt.clone();
            let rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                mqtt.serve_tls(l, tls, meshgate_tls::certificate_app, rx)
                    .await
            }));
        }
        let state = HttpState {
            broker: broker.clone(),
            metrics: {
                let (mesh, mqtt, disk) = (mesh.clone(), mqtt.clone(), broker.disk().cloned());
                let bridges = bridges.clone();
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
                    metrics.render()
                })
            },
            mesh: mesh.clone().map(|m| {
                let f: meshgate_http::ViewFn<_> = Arc::new(move || m.view());
                f
            }),
            sse_queue: config.http.sse_queue,
            tokens: Arc::new(
                config
                    .http
                    .tokens
                    .iter()
                    .map(|t| (t.digest(), Arc::from(t.app_id.as_str())))
                    .collect(),
            ),
            catalog: governance.clone().map(|g| {
                let api: Arc<dyn meshgate_http::CatalogApi> = Arc::new(CatalogAdmin {
                    governance: g,
                    broker: broker.clone(),
                    chargeback: chargeback.clone(),
                });
                api
            }),
            chargeback: chargeback.map(|c| {
                let api: Arc<dyn meshgate_http::ChargebackApi> = Arc::new(ChargebackAdmin(c));
                api
            }),
            backlog: broker.disk().cloned().map(|disk| {
                let (mesh, mqtt, bridges) = (mesh.clone(), mqtt.clone(), bridges.clone());
                let commit = format!("{:?}", config.store.commit).to_lowercase();
                let f: meshgate_http::ViewFn<_> = Arc::new(move || BacklogView {
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
                });
                f
            }),
            bridges: Some({
                let bridges = bridges.clone();
                let f: meshgate_http::ViewFn<_> = Arc::new(move || bridges.view());
                f
            }),
            replay: replay_fn(&config, &bctx),
        };
        tasks.push(tokio::spawn(async move {
            if let Err(e) = meshgate_http::serve(http_l, state, rx).await {
                warn!(error = %e, "http server ended");
            }
        }));
        info!(node = %config.node.name, mqtt = %mqtt_addr, http = %http_addr, "node started");
        Ok(Node {
            broker,
            mqtt_addr,
            http_addr,
            mesh,
            shutdown,
            tasks,
        })
    }

    /// Where MQTT is served (the real port when configured with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Where HTTP is served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The mesh side, when the node has certificates.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Where mesh links are accepted (UDP), when the mesh runs.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh.as_ref().map(Mesh::local_addr)
    }

    /// The node's router.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops accepting, tells connected clients, and waits (briefly) for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        if let Some(mesh) = &self.mesh
            && !mesh.drain(Duration::from_secs(3)).await
        {
            warn!("some mesh tasks were still running at shutdown");
        }
        // Let connection tasks write their DISCONNECT.
        tokio::task::yield_now().await;
    }
}

/// `POST /v1/bridges/kafka/{cluster}/replay`, when the build has Kafka.
#[cfg(feature = "kafka")]
fn replay_fn(
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
fn replay_fn(
    _config: &Config,
    _bctx: &meshgate_bridge::BridgeContext,
) -> Option<meshgate_http::ReplayFn> {
    None
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Reloads the governance specs on every SIGHUP until the node stops.
async fn reload_on_sighup(g: Arc<Governance>, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP: reload the specs over HTTP");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = hup.recv() => {
                // Refused specs are logged and counted; the catalog in force stays.
                let _ = g.reload();
            }
        }
    }
}

/// The admin API's view of the governance catalog, with who subscribes and produces now.
struct CatalogAdmin {
    governance: Arc<Governance>,
    broker: Broker,
    chargeback: Option<Arc<chargeback::Chargeback>>,
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
struct ChargebackAdmin(Arc<chargeback::Chargeback>);

impl meshgate_http::ChargebackApi for ChargebackAdmin {
    fn rows(&self, from: Option<u64>, to: Option<u64>) -> meshgate_api::ChargebackView {
        self.0.rows(from, to)
    }
}
