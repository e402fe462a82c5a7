//! Wiring of a meshgate node: loads the configuration, binds the listeners, starts the tasks,
//! and shuts them down. Holds no routing or protocol logic of its own.

mod admin;
mod chargeback;
mod config;
mod governance;
mod wiring;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meshgate_broker::Broker;
use meshgate_http::HttpState;
use meshgate_mesh::{Mesh, MeshError, TlsError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{CommitPolicy, Config, ConfigError, LogFormat, Overrides, SlowConsumer};
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
        let broker = wiring::broker(&config)?;
        // Governance before any client: publishes, subscriptions and deliveries are checked
        // from the first connection.
        let governance = wiring::governance(&config, &broker)?;
        let chargeback = wiring::chargeback(&config, &broker, &governance);
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
        // Persistent sessions come back (subscriptions in the trie, journals open) before the
        // mesh starts, so their interest is advertised from the first gossip.
        let mqtt = Arc::new(wiring::mqtt(&config, &broker)?);
        let mesh = wiring::mesh(&config, &broker, rx.clone()).await?;

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
        let parts = admin::Parts {
            broker: &broker,
            mesh: &mesh,
            mqtt: &mqtt,
            bridges: &bridges,
            governance: &governance,
            chargeback: &chargeback,
        };
        let state = HttpState {
            broker: broker.clone(),
            metrics: admin::metrics(&parts, metrics),
            mesh: mesh.clone().map(|m| {
                let f: meshgate_http::ViewFn<_> = Arc::new(move || m.view());
                f
            }),
            sse_limits: meshgate_broker::flow::Limits {
                events: config.http.sse_queue,
                bytes: config.http.sse_queue_bytes,
                slow: config.http.slow_consumer.into(),
            },
            publish_wait: Duration::from_millis(config.http.publish_wait_ms),
            tokens: Arc::new(
                config
                    .http
                    .tokens
                    .iter()
                    .map(|t| (t.digest(), Arc::from(t.app_id.as_str())))
                    .collect(),
            ),
            catalog: admin::catalog(&parts),
            chargeback: admin::chargeback(&parts),
            backlog: admin::backlog(&parts, &config),
            bridges: Some({
                let bridges = bridges.clone();
                let f: meshgate_http::ViewFn<_> = Arc::new(move || bridges.view());
                f
            }),
            replay: admin::replay(&config, &bctx),
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
