//! `GET /v1/ws?filter=`: a WebSocket that delivers matching events as JSON text messages and
//! accepts publishes the same way.
//!
//! Server to client: `{"topic": T, "id": ID, "payload": UTF-8}` (or `"payload_base64"` when the
//! payload is not UTF-8). Client to server: `{"topic": T, "payload": "..."}` (or
//! `"payload_base64"`, and `"retain": true`); a refused publish is answered `{"error": "..."}`.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use meshgate_proto::Envelope;
use serde::Deserialize;
use serde_json::json;

use crate::HttpState;
use crate::subscribe::{SubscribeParams, Subscription};

/// A publish sent by the client over the socket.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsPublish {
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    retain: bool,
}

pub(crate) async fn websocket(
    State(s): State<HttpState>,
    params: Result<Query<SubscribeParams>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let app = match crate::identify(&s, &headers) {
        Ok(app) => app,
        Err(e) => return e.into_response(),
    };
    // Subscribe before the upgrade so that a bad filter is a plain 400 JSON answer.
    let sub = match Subscription::open(&s, params, app.clone()).await {
        Ok(sub) => sub,
        Err(resp) => return resp,
    };
    let max = s.broker.config().max_payload_bytes;
    upgrade
        .max_message_size(max.saturating_mul(2).saturating_add(4096))
        .on_upgrade(move |socket| serve(s, sub, socket, app))
}

async fn serve(s: HttpState, mut sub: Subscription, mut socket: WebSocket, app: Option<Arc<str>>) {
    let mut publisher = s.broker.publisher("http", None);
    publisher.set_app_id(app);
    let mut batch = Vec::with_capacity(64);
    let stall = s.broker.config().stall;
    loop {
        // A publish that filled a congested queue: the socket is not read until it has room.
        let stalled = publisher.is_congested();
        tokio::select! {
            () = publisher.wait_for_room(stall), if stalled => {
                publisher.flush(&s.broker);
            }
            n = sub.rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                for d in batch.drain(..) {
                    if socket.send(Message::Text(event_json(&d.event).into())).await.is_err() {
                        return;
                    }
                }
            }
            msg = socket.recv(), if !stalled => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let e = json!({"error": "send publishes as JSON text messages"});
                        if socket.send(Message::Text(e.to_string().into())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                if let Err(e) = publish(&s, &mut publisher, &text) {
                    let e = json!({ "error": e });
                    if socket.send(Message::Text(e.to_string().into())).await.is_err() {
                        return;
                    }
                }
                publisher.flush(&s.broker);
            }
        }
    }
}

fn publish(s: &HttpState, p: &mut meshgate_broker::Publisher, text: &str) -> Result<(), String> {
    let m: WsPublish = serde_json::from_str(text).map_err(|e| format!("invalid publish: {e}"))?;
    let payload = match (m.payload, m.payload_base64) {
        (Some(t), None) => Bytes::from(t),
        (None, Some(b)) => Bytes::from(B64.decode(b).map_err(|e| format!("invalid base64: {e}"))?),
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => return Err("give payload or payload_base64, not both".into()),
    };
    let env = Envelope {
        topic: m.topic,
        payload,
        retain: m.retain,
        ..Default::default()
    };
    s.broker
        .publish(p, env, 0)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn event_json(e: &Envelope) -> String {
    let id = e.event_id().to_string();
    match std::str::from_utf8(&e.payload) {
        Ok(text) => json!({ "topic": e.topic, "id": id, "payload": text }),
        Err(_) => json!({ "topic": e.topic, "id": id, "payload_base64": B64.encode(&e.payload) }),
    }
    .to_string()
}
