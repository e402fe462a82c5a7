//! Reading a journaled mailbox in order.
//!
//! A session with a journal gets every QoS 1 delivery twice: appended to the journal (the copy
//! that counts) and offered to its mailbox (a cache that may overflow, and is empty after a
//! restart). [`JournalCursor`] merges the two back into journal order for whoever drains the
//! session: an MQTT connection, a bridge sink.

use std::collections::VecDeque;

use meshgate_store::{Journal, StoreError};
use tracing::warn;

use crate::mailbox::Delivery;

/// Position of a consumer in its session's journal: the next sequence number to take.
#[derive(Clone)]
pub struct JournalCursor {
    journal: Journal,
    next: u64,
}

impl JournalCursor {
    /// A cursor at `next` (at least the journal's first unreleased record).
    pub fn new(journal: Journal, next: u64) -> Self {
        let next = next.max(journal.bounds().0);
        Self { journal, next }
    }

    /// The journal read.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The next sequence number to take.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Whether the journal holds deliveries not taken yet.
    pub fn has_more(&self) -> bool {
        self.journal.bounds().1 > self.next
    }

    /// Takes a journaled delivery received from the mailbox, in journal order: one taken already
    /// is skipped; one beyond a gap (the mailbox overflowed) is preceded by the gap read back
    /// from the journal if `out` holds fewer than `limit`, or else left in the journal for later.
    pub fn take(&mut self, d: Delivery, out: &mut VecDeque<Delivery>, limit: usize) {
        if d.seq > self.next && out.len() < limit {
            self.read((d.seq - self.next) as usize, out);
        }
        if d.seq == self.next {
            self.next += 1;
            out.push_back(d);
        }
    }

    /// Reads up to `max` deliveries from the cursor on into `out`. A damaged or undecodable
    /// record is logged and stepped over.
    pub fn read(&mut self, max: usize, out: &mut VecDeque<Delivery>) {
        let records = match self.journal.read_from(self.next, max) {
            Ok(r) => r,
            Err(StoreError::Corrupt { seq, .. }) if seq >= self.next => {
                // Take what precedes the damaged record, then step over it.
                warn!(seq, "damaged record in a session journal skipped");
                let before = (seq - self.next) as usize;
                if before > 0 {
                    let r = self
                        .journal
                        .read_from(self.next, before)
                        .unwrap_or_default();
                    self.take_records(r, out);
                }
                self.next = self.next.max(seq + 1);
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot read a session journal");
                return;
            }
        };
        self.take_records(records, out);
    }

    fn take_records(&mut self, records: Vec<(u64, Vec<u8>)>, out: &mut VecDeque<Delivery>) {
        for (seq, rec) in records {
            if seq < self.next {
                continue;
            }
            match Delivery::decode(seq, &rec) {
                Some(d) => out.push_back(d),
                None => warn!(seq, "undecodable record in a session journal skipped"),
            }
            self.next = seq + 1;
        }
    }
}
