//! Delivery to the subscriber: the out-queue and the in-flight window, packet ids, batches
//! from the mailbox, and the journal of a stored session (read back, released as the client
//! acknowledges).

use std::time::Duration;

use meshgate_broker::MailboxReceiver;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use crate::codec::{self, Ack};
use crate::conn::Conn;
use crate::protocol_error;
use crate::reason::Reason;

/// Most journal records read back at once (bounds the memory a backlog takes).
pub(crate) const JOURNAL_READ: usize = 4096;
/// Least time between two releases of the session journal (each costs an fsync).
const RELEASE_EVERY: Duration = Duration::from_millis(250);

impl Conn {
    /// Picks up what the session kept: unacknowledged deliveries go out again with DUP.
    pub(crate) fn resume(&mut self) {
        let mut st = self.session.state.lock();
        let unacked = std::mem::take(&mut st.unacked);
        let unsent = std::mem::take(&mut st.unsent);
        drop(st);
        for (pkid, d) in unacked {
            codec::encode_publish(
                self.ver,
                &d,
                pkid,
                true,
                self.client_max,
                &mut self.props,
                &mut self.wbuf,
            );
            self.inflight.push_back((pkid, d));
        }
        self.outq.extend(unsent);
        self.pump();
    }

    /// Keeps what was not delivered for the next connection of a persistent session, releases
    /// the journal as far as acknowledged, and hands the mailbox back.
    pub(crate) fn keep_for_later(&mut self, rx: MailboxReceiver) {
        self.release();
        let mut st = self.session.state.lock();
        st.unacked = std::mem::take(&mut self.inflight);
        st.unsent = std::mem::take(&mut self.outq);
        if let Some(c) = &self.cursor {
            st.disk_next = c.next();
        }
        drop(st);
        self.session.mailbox.detach(rx);
    }

    /// Takes the batch received from the mailbox into the out-queue, journaled deliveries in
    /// journal order (see [`JournalCursor::take`]).
    pub(crate) fn take_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        self.took_journaled = false;
        for d in batch.drain(..) {
            match self.cursor.as_mut() {
                Some(c) if d.seq != 0 => {
                    self.took_journaled = true;
                    c.take(d, &mut self.outq, JOURNAL_READ);
                }
                _ => self.outq.push_back(d),
            }
        }
        self.batch = batch;
    }

    /// Arms the release timer (at most one release per `RELEASE_EVERY`).
    pub(crate) fn schedule_release(&mut self) {
        if self.cursor.is_none() || self.release_at.is_some() {
            return;
        }
        let at = (self.last_release + RELEASE_EVERY).max(Instant::now());
        self.release_at = Some(at);
        self.release_timer.as_mut().reset(at);
    }

    /// Releases the journal up to just below the oldest journaled delivery not acknowledged
    /// (in flight or queued), or everything taken if none. The fsync runs off this task.
    pub(crate) fn release(&mut self) {
        self.release_at = None;
        self.last_release = Instant::now();
        let Some(c) = &self.cursor else { return };
        let oldest = self
            .inflight
            .iter()
            .map(|(_, d)| d.seq)
            .chain(self.outq.iter().map(|d| d.seq))
            .find(|&s| s != 0);
        let upto = match oldest {
            Some(s) => s - 1,
            None => c.next().saturating_sub(1),
        };
        if upto <= self.released {
            return;
        }
        self.released = upto;
        let j = c.journal().clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = j.release_up_to(upto) {
                warn!(error = %e, "cannot release the session journal");
            }
        });
    }

    /// Encodes queued deliveries while the in-flight window allows.
    pub(crate) fn pump(&mut self) {
        while let Some(d) = self.outq.front() {
            if d.qos > 0 && self.inflight.len() >= self.window {
                break;
            }
            let Some(d) = self.outq.pop_front() else {
                break;
            };
            let pkid = if d.qos > 0 { self.alloc_pkid() } else { 0 };
            let ok = codec::encode_publish(
                self.ver,
                &d,
                pkid,
                false,
                self.client_max,
                &mut self.props,
                &mut self.wbuf,
            );
            if !ok {
                protocol_error("over_client_max_packet");
                continue;
            }
            self.sent += 1;
            if d.qos > 0 {
                self.inflight.push_back((pkid, d));
            }
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            let id = self.next_pkid;
            // The window is far below 65,535, so a free id is always found quickly.
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    /// Sends the acknowledgement of a publish once `ticket` is durable, after every earlier one.
    pub(crate) fn ack(
        &mut self,
        ticket: u64,
        pkid: u16,
        kind: Ack,
        reason: Reason,
        text: Option<String>,
    ) {
        // While deliveries of this batch are held, no publish of it is durable yet: the
        // acknowledgement waits for the batch's ticket (set in `on_bytes`).
        if self.acks.is_empty()
            && !self.publisher.holds()
            && self.disk.as_ref().is_none_or(|d| d.is_durable(ticket))
        {
            codec::encode_ack_reason(
                self.ver,
                kind,
                pkid,
                reason,
                text.as_deref(),
                &mut self.wbuf,
            );
        } else {
            self.acks.push_back(PendingAck {
                ticket,
                pkid,
                kind,
                reason,
                text,
            });
        }
    }

    /// Sends the waiting acknowledgements that became durable, in order.
    pub(crate) fn flush_acks(&mut self) {
        while let Some(a) = self.acks.front() {
            if self.disk.as_ref().is_some_and(|d| !d.is_durable(a.ticket)) {
                break;
            }
            codec::encode_ack_reason(
                self.ver,
                a.kind,
                a.pkid,
                a.reason,
                a.text.as_deref(),
                &mut self.wbuf,
            );
            self.acks.pop_front();
        }
    }
}

/// An acknowledgement waiting until the publish it answers is durable.
pub(crate) struct PendingAck {
    pub(crate) ticket: u64,
    pkid: u16,
    kind: Ack,
    /// v5 reason code.
    reason: Reason,
    /// v5 reason string.
    text: Option<String>,
}

/// Resolves when the disk's commit cycle moves on (never without a disk).
pub(crate) async fn wait_durable(rx: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}
