//! A source's way into the mesh: records become guaranteed events, and the source learns when
//! they are durable so that it acknowledges its broker (commits the Kafka offset, acks the AMQP
//! delivery) only then.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshgate_broker::{Broker, PublishError, Publisher};
use meshgate_proto::{Envelope, Provenance};
use thiserror::Error;
use tokio::sync::watch;

use crate::backoff::Backoff;

use crate::status::BridgeStatus;

/// Why a record was not taken.
#[derive(Debug, Error)]
pub enum IngressError {
    /// The store is at its quota: retry the same record later (never skip it).
    #[error("{0}")]
    Full(PublishError),
    /// The record can never be accepted (invalid topic, payload too large): counted as refused.
    #[error("{0}")]
    Refused(PublishError),
}

/// Publishes one source's records.
pub struct Ingress {
    broker: Broker,
    publisher: Publisher,
    provenance: Provenance,
    status: Arc<BridgeStatus>,
    /// Highest commit ticket of what was published since the last [`Ingress::durable`].
    ticket: u64,
    /// Forwarded and unrouted records not yet added to the status (added once per batch, in
    /// [`Ingress::durable`], rather than one shared atomic add per record).
    forwarded: u64,
    unrouted: u64,
    /// Whether the publisher's clock was set in this batch (read once per batch, not per
    /// record: a clock read was 2% of a Kafka source's profile).
    clock_set: bool,
}

impl Ingress {
    /// Records of `member` (a `protocol` cluster or broker), published as `app_id`.
    pub fn new(
        broker: &Broker,
        protocol: &'static str,
        member: &str,
        app_id: &str,
        status: Arc<BridgeStatus>,
    ) -> Self {
        let mut publisher = broker.publisher(protocol, None);
        publisher.set_app_id(Some(app_id.into()));
        Self {
            broker: broker.clone(),
            publisher,
            provenance: Provenance {
                protocol: protocol.into(),
                member: member.into(),
            },
            status,
            ticket: 0,
            forwarded: 0,
            unrouted: 0,
            clock_set: false,
        }
    }

    /// The source's status.
    pub fn status(&self) -> &BridgeStatus {
        &self.status
    }

    /// Publishes `env` as a guaranteed event. `Ok` means accepted: stored for every subscriber
    /// (or wanted by none, and so dropped here at the edge).
    pub fn publish(&mut self, mut env: Envelope) -> Result<(), IngressError> {
        env.provenance = Some(self.provenance.clone());
        if !self.clock_set {
            self.publisher.set_clock(meshgate_broker::now_ms());
            self.clock_set = true;
        }
        match self.broker.publish(&mut self.publisher, env, 1) {
            Ok(r) => {
                self.ticket = self.ticket.max(r.ticket);
                if r.routed + r.remote > 0 {
                    self.forwarded += 1;
                } else {
                    self.unrouted += 1;
                }
                Ok(())
            }
            // Not refused for good: the record is published again once the store takes it (a
            // failed store: after a restart), and its offset is not committed meanwhile.
            Err(e @ (PublishError::QuotaExceeded { .. } | PublishError::StoreFailed(_))) => {
                Err(IngressError::Full(e))
            }
            Err(e) => {
                self.status.refused.fetch_add(1, Ordering::Relaxed);
                Err(IngressError::Refused(e))
            }
        }
    }

    /// Waits out a full store before the caller publishes the same record again: what was
    /// published is made durable (so its space can be released downstream), then a backoff.
    /// False when the node stops meanwhile.
    pub async fn wait_for_room(
        &mut self,
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        self.durable().await;
        tokio::select! {
            _ = shutdown.changed() => false,
            _ = tokio::time::sleep(backoff.next_delay()) => true,
        }
    }

    /// Resolves once everything published so far is stored durably, and the subscribers it
    /// congested have room again (flow control: a source pauses consuming while they do not;
    /// see meshgate_broker::flow). Also brings the source's `forwarded` and `unrouted`
    /// counters up to date.
    pub async fn durable(&mut self) {
        if self.publisher.is_congested() {
            let stall = self.broker.config().stall;
            self.publisher.wait_for_room(stall).await;
        }
        self.publisher.flush(&self.broker);
        self.clock_set = false;
        let forwarded = std::mem::take(&mut self.forwarded);
        let unrouted = std::mem::take(&mut self.unrouted);
        self.status
            .forwarded
            .fetch_add(forwarded, Ordering::Relaxed);
        self.status.unrouted.fetch_add(unrouted, Ordering::Relaxed);
        let ticket = std::mem::take(&mut self.ticket);
        if ticket != 0
            && let Some(disk) = self.broker.disk()
        {
            disk.wait(ticket).await;
        }
    }
}
