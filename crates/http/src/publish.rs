//! `POST /v1/publish/{topic}`: the body is the payload.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use meshgate_api::PublishAnswer;
use meshgate_broker::PublishError;
use meshgate_proto::{DeliveryClass, Envelope, Header};
use serde::Deserialize;

use crate::{HttpState, error};

/// Query parameters of a publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishParams {
    /// Keep the event as the topic's retained message (MQTT semantics).
    #[serde(default)]
    retain: bool,
    /// `direct` (default) or `guaranteed`; the `X-Meshgate-Delivery` header says the same.
    delivery: Option<String>,
}

pub(crate) async fn publish(
    State(s): State<HttpState>,
    Path(topic): Path<String>,
    params: Result<Query<PublishParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let payload = match body {
        Ok(b) => b,
        Err(e) => {
            let max = s.broker.config().max_payload_bytes;
            let status = e.status();
            let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("payload exceeds the limit of {max} bytes")
            } else {
                e.body_text()
            };
            return error(status, msg);
        }
    };
    let header = headers
        .get("x-meshgate-delivery")
        .and_then(|v| v.to_str().ok());
    let guaranteed = match params.delivery.as_deref().or(header) {
        None | Some("direct") => false,
        Some("guaranteed") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("delivery {other:?}: use \"direct\" or \"guaranteed\""),
            );
        }
    };
    let mut env = Envelope {
        topic,
        payload,
        retain: params.retain,
        delivery: DeliveryClass::Direct as i32,
        ..Default::default()
    };
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        env.payload_utf8 = ct.starts_with("text/") || ct.contains("json");
        env.content_type = ct.to_string();
    }
    // CloudEvents binary mode: `ce-*` headers travel as event headers.
    for (name, value) in &headers {
        if name.as_str().starts_with("ce-") {
            env.headers.push(Header {
                name: name.as_str().to_string(),
                value: Bytes::copy_from_slice(value.as_bytes()),
            });
        }
    }
    let app = match crate::identify(&s, &headers) {
        Ok(app) => app,
        Err(e) => return e.into_response(),
    };
    let mut p = s.broker.publisher("http", None);
    p.set_app_id(app);
    // Flow control before the publish: a REST client can be told to come back later, so the
    // event waits for congested queues here instead of after it was accepted.
    if meshgate_topic::validate_topic(&env.topic).is_ok() {
        s.broker.congested_for(&env.topic, p.congestion());
        if p.is_congested() {
            let stall = s.broker.config().stall;
            let waited = tokio::time::timeout(s.publish_wait, p.wait_for_room(stall)).await;
            p.flush(&s.broker);
            if waited.is_err() {
                return busy(s.publish_wait);
            }
        }
    }
    let r = s.broker.publish(&mut p, env, u8::from(guaranteed));
    p.flush(&s.broker);
    match r {
        Ok(r) => {
            // A guaranteed event is answered once stored durably.
            if let Some(disk) = s.broker.disk()
                && let Err(failed) = disk.wait_or_fail(r.ticket).await
            {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{failed}; the event is not stored durably"),
                );
            }
            let delivery = if guaranteed { "guaranteed" } else { "direct" };
            let answer = PublishAnswer {
                id: r.id.to_string(),
                routed: r.routed as u64,
                remote: r.remote as u64,
                delivery: delivery.to_string(),
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(e @ PublishError::QuotaExceeded { .. }) => error(StatusCode::INSUFFICIENT_STORAGE, e),
        Err(e @ PublishError::StoreFailed(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ PublishError::Topic(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ PublishError::PayloadTooLarge { .. }) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e @ PublishError::RetainedFull(_)) => error(StatusCode::INSUFFICIENT_STORAGE, e),
        Err(PublishError::Denied(d)) => crate::denied(&d),
    }
}

/// 503 with `Retry-After`: the event's subscribers (or links) are still congested after the
/// wait; nothing was published.
fn busy(waited: std::time::Duration) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "subscribers of this topic are congested (waited {} ms); nothing was published, retry later",
            waited.as_millis()
        ),
    );
    let secs = waited.as_secs().max(1).to_string();
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(crate) async fn empty_topic() -> Response {
    error(StatusCode::BAD_REQUEST, "invalid topic: topic is empty")
}
