//! `GET /v1/subscribe?filter=`: matching events as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use meshgate_broker::{Broker, Mailbox, MailboxReceiver, SubOptions};
use meshgate_topic::{Filter, MqttFilter, parse_mqtt_filter};
use serde::Deserialize;

use crate::{HttpState, error};

/// Query parameters of a subscription.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeParams {
    /// Native filter (`orders/*/us/>`) or MQTT filter (`orders/+/us/#`, `$share/g/...`).
    filter: String,
    /// Queue group: each event goes to one stream of the group.
    group: Option<String>,
}

/// Ends the stream's subscription when the client goes away (the stream is dropped).
pub(crate) struct Subscription {
    broker: Broker,
    mailbox: Arc<Mailbox>,
    filters: Vec<Filter>,
    group: Option<String>,
    pub(crate) rx: MailboxReceiver,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for f in &self.filters {
            self.broker
                .unsubscribe(self.mailbox.id(), f, self.group.as_deref());
        }
        self.broker.end_session(self.mailbox.id());
    }
}

pub(crate) async fn subscribe(
    State(s): State<HttpState>,
    params: Result<Query<SubscribeParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let app = match crate::identify(&s, &headers) {
        Ok(app) => app,
        Err(e) => return e.into_response(),
    };
    let sub = match Subscription::open(&s, params, app).await {
        Ok(sub) => sub,
        Err(resp) => return resp,
    };
    Sse::new(events(sub))
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl Subscription {
    /// Validates the query and subscribes a fresh mailbox for `app`; the error is the HTTP
    /// answer (403 when the policy refuses the filter).
    pub(crate) async fn open(
        s: &HttpState,
        params: Result<Query<SubscribeParams>, axum::extract::rejection::QueryRejection>,
        app: Option<Arc<str>>,
    ) -> Result<Subscription, Response> {
        let Query(params) = params.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
        let (filters, group) = match parse_filter(&params.filter) {
            Ok((f, g)) => (f, params.group.or(g)),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid filter: {e}"),
                ));
            }
        };
        if group
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.contains(['/', '+', '#', '*', '>']))
        {
            return Err(error(StatusCode::BAD_REQUEST, "invalid group name"));
        }
        let judged = MqttFilter {
            filters: filters.clone(),
            group: group.clone(),
        };
        if let Err(d) = s.broker.check_subscribe(app.as_deref(), &judged) {
            return Err(crate::denied(&d));
        }
        let mailbox = s.broker.new_mailbox(s.sse_limits);
        mailbox.set_app(app);
        let rx = mailbox.attach().await;
        for f in &filters {
            s.broker
                .subscribe(&mailbox, f, group.as_deref(), SubOptions::default());
        }
        Ok(Subscription {
            broker: s.broker.clone(),
            mailbox,
            filters,
            group,
            rx,
        })
    }
}

/// Native syntax unless the filter uses MQTT's `+`, `#` or `$share/`.
fn parse_filter(text: &str) -> Result<(Vec<Filter>, Option<String>), meshgate_topic::TopicError> {
    if text.contains(['+', '#']) || text.starts_with("$share/") {
        let m = parse_mqtt_filter(text)?;
        return Ok((m.filters, m.group));
    }
    Ok((vec![Filter::parse(text)?], None))
}

fn events(sub: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(sub, |mut sub| async move {
        let d = sub.rx.recv().await?;
        let e = &d.event;
        // SSE field values cannot hold line breaks; topics may (they are plain UTF-8).
        let name = if e.topic.contains(['\n', '\r']) {
            e.topic.replace(['\n', '\r'], " ")
        } else {
            e.topic.clone()
        };
        let ev = Event::default()
            .event(name)
            .id(e.event_id().to_string())
            .data(String::from_utf8_lossy(&e.payload));
        Some((Ok(ev), sub))
    })
}
