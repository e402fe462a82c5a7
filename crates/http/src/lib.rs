//! HTTP API of a meshgate node (axum). Clients: `POST /v1/publish/{topic}`,
//! `GET /v1/subscribe?filter=` (Server-Sent Events), `GET /v1/ws?filter=` (WebSocket, both
//! directions). Admin: `GET /v1/mesh`, `/v1/node`, `/v1/backlog`, `/v1/bridges`, `/v1/catalog`,
//! `POST /v1/catalog/reload`, `GET /v1/chargeback`, `POST /v1/bridges/kafka/{cluster}/replay`
//! (answers are the `meshgate-api` types), `GET /healthz`, `GET /metrics`.
//!
//! Errors are JSON `{"error": "..."}` with a status that says what went wrong. Publishes and
//! subscriptions go through the node's [`meshgate_broker::Broker`] like MQTT ones.

mod publish;
mod subscribe;
mod ws;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshgate_api::{
    ApiError, BacklogView, BridgeView, CatalogView, ChargebackView, MeshView, NodeInfo, ReloadOk,
    ReloadRefused, ReplayReport, ReplayRequest,
};
use meshgate_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Renders the Prometheus exposition text.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Renders one admin view (`GET /v1/mesh`, `/v1/backlog`, `/v1/bridges`) when asked.
pub type ViewFn<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// Runs a replay of a Kafka cluster's topic: (cluster, request) to a report, or an HTTP status
/// and message.
pub type ReplayFn = Arc<
    dyn Fn(
            String,
            ReplayRequest,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<ReplayReport, (u16, String)>> + Send>>
        + Send
        + Sync,
>;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The node's router.
    pub broker: Broker,
    /// Prometheus text for `/metrics`.
    pub metrics: MetricsRender,
    /// The mesh, when the node has one.
    pub mesh: Option<ViewFn<MeshView>>,
    /// The queue of each SSE and WebSocket stream: publishers wait above it while the stream
    /// takes, and a stream that takes nothing is handled by its slow-consumer policy (see
    /// meshgate_broker::flow).
    pub sse_limits: meshgate_broker::flow::Limits,
    /// Longest a REST publish waits for congested queues before it is answered 503 with
    /// `Retry-After` (and not published).
    pub publish_wait: std::time::Duration,
    /// `GET /v1/backlog`: the store and what waits in it, per link and per session.
    pub backlog: Option<ViewFn<BacklogView>>,
    /// `GET /v1/bridges`: every source and sink with its state, last error and counters.
    pub bridges: Option<ViewFn<Vec<BridgeView>>>,
    /// `POST /v1/bridges/kafka/{cluster}/replay`.
    pub replay: Option<ReplayFn>,
    /// REST bearer tokens, by their SHA-256 in lowercase hex
    /// ([`meshgate_auth::token_digest`]), and the app id each authenticates as. A request
    /// without a token is anonymous (what it may do is the node's policy's call); an unknown
    /// token is refused.
    pub tokens: Arc<std::collections::HashMap<String, Arc<str>>>,
    /// `GET /v1/catalog` and `POST /v1/catalog/reload`, when the node is governed by specs.
    pub catalog: Option<Arc<dyn CatalogApi>>,
    /// `GET /v1/chargeback`, when the node meters its apps.
    pub chargeback: Option<Arc<dyn ChargebackApi>>,
}

/// Metered traffic per app, as the admin API shows it.
pub trait ChargebackApi: Send + Sync {
    /// Rows of the minutes in `[from, to)` (unix seconds).
    fn rows(&self, from: Option<u64>, to: Option<u64>) -> ChargebackView;
}

/// Query of `GET /v1/chargeback`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargebackParams {
    /// Unix seconds, inclusive (minute resolution).
    from: Option<u64>,
    /// Unix seconds, exclusive.
    to: Option<u64>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// The governance catalog as the admin API shows and reloads it.
pub trait CatalogApi: Send + Sync {
    /// `GET /v1/catalog`: data products, channels, owners, access, schemas.
    fn view(&self) -> CatalogView;
    /// `POST /v1/catalog/reload`: reads the specs again; the problems if they are refused
    /// (the catalog in force stays).
    fn reload(&self) -> Result<ReloadOk, ReloadRefused>;
}

/// A request with a bearer token the node does not know: answered 401.
pub(crate) struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        error(StatusCode::UNAUTHORIZED, "unknown bearer token")
    }
}

/// The app id a request authenticates as: `Authorization: Bearer <token>`, or anonymous
/// without one; an unknown token is [`Unauthorized`].
pub(crate) fn identify(
    s: &HttpState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Arc<str>>, Unauthorized> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| s.tokens.get(&meshgate_auth::token_digest(t.as_bytes()))) {
        Some(app) => Ok(Some(app.clone())),
        None => Err(Unauthorized),
    }
}

/// The answer to a publish or subscription the policy refused.
pub(crate) fn denied(d: &meshgate_broker::Denied) -> Response {
    use meshgate_broker::DenyKind;
    let status = match d.kind {
        DenyKind::NotAuthorized => StatusCode::FORBIDDEN,
        DenyKind::InvalidTopic => StatusCode::BAD_REQUEST,
        DenyKind::InvalidPayload => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, &d.message)
}

/// The API's routes.
pub fn router(state: HttpState) -> Router {
    // Room for the payload limit itself: a larger body is refused by the broker with a JSON
    // error that names both sizes; far larger bodies stop at this layer.
    let body_limit = state.broker.config().max_payload_bytes.saturating_add(1);
    Router::new()
        .route("/v1/publish/{*topic}", post(publish::publish))
        .route("/v1/publish/", post(publish::empty_topic))
        .route("/v1/subscribe", get(subscribe::subscribe))
        .route("/v1/ws", get(ws::websocket))
        .route("/v1/mesh", get(mesh))
        .route("/v1/node", get(node))
        .route("/v1/backlog", get(backlog))
        .route("/v1/bridges", get(bridges))
        .route("/v1/catalog", get(catalog))
        .route("/v1/catalog/reload", post(catalog_reload))
        .route("/v1/chargeback", get(chargeback))
        .route("/v1/bridges/kafka/{cluster}/replay", post(replay))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves the API until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "http listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let body = ApiError {
        error: msg.to_string(),
    };
    (status, Json(body)).into_response()
}

async fn catalog(State(s): State<HttpState>) -> Response {
    match &s.catalog {
        Some(c) => Json(c.view()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no catalog: the node has no governance.specs_dir",
        ),
    }
}

async fn catalog_reload(State(s): State<HttpState>) -> Response {
    match &s.catalog {
        Some(c) => match c.reload() {
            Ok(v) => Json(v).into_response(),
            Err(v) => (StatusCode::UNPROCESSABLE_ENTITY, Json(v)).into_response(),
        },
        None => error(
            StatusCode::NOT_FOUND,
            "no catalog: the node has no governance.specs_dir",
        ),
    }
}

async fn chargeback(
    State(s): State<HttpState>,
    params: Result<
        axum::extract::Query<ChargebackParams>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let axum::extract::Query(p) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(c) = &s.chargeback else {
        return error(
            StatusCode::NOT_FOUND,
            "no chargeback: the node meters apps once it has identities or specs",
        );
    };
    let rows = c.rows(p.from, p.to);
    match p.format.as_deref() {
        None | Some("json") => Json(rows).into_response(),
        Some("csv") => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            rows.to_csv(),
        )
            .into_response(),
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            format!("format {other:?}: use json or csv"),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        (s.metrics)(),
    )
        .into_response()
}

/// The contract's mesh view; a node without mesh certificates has no links.
async fn mesh(State(s): State<HttpState>) -> Json<MeshView> {
    if let Some(view) = &s.mesh {
        return Json(view());
    }
    let name = s.broker.node_name().to_string();
    Json(MeshView {
        nodes: vec![name.clone()],
        node: name,
        ..MeshView::default()
    })
}

/// Guaranteed events waiting, per link queue and per persistent session, and the store.
async fn backlog(State(s): State<HttpState>) -> Json<BacklogView> {
    Json(s.backlog.as_ref().map(|v| v()).unwrap_or_default())
}

/// Sources and sinks of the node's bridges.
async fn bridges(State(s): State<HttpState>) -> Json<Vec<BridgeView>> {
    Json(s.bridges.as_ref().map(|v| v()).unwrap_or_default())
}

/// Republishes a range of a Kafka topic into the mesh; answers once the events are durable.
async fn replay(
    State(s): State<HttpState>,
    axum::extract::Path(cluster): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(replay) = &s.replay else {
        return error(StatusCode::NOT_FOUND, "this node has no Kafka bridge");
    };
    let req: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
    };
    match replay(cluster, req).await {
        Ok(report) => Json(report).into_response(),
        Err((code, msg)) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            msg,
        ),
    }
}

/// Counts of what the node holds.
async fn node(State(s): State<HttpState>) -> Json<NodeInfo> {
    let (subs, filters) = s.broker.subscription_counts();
    Json(NodeInfo {
        node: s.broker.node_name().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sessions: s.broker.session_count() as u64,
        subscriptions: subs as u64,
        filters: filters as u64,
        retained: s.broker.retained_count() as u64,
    })
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}
