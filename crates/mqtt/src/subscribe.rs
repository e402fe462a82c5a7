//! SUBSCRIBE and UNSUBSCRIBE: filters checked and entered into the router, the session's
//! record of them, and retained events for a new subscription.

use meshgate_broker::{Delivery, SubOptions};
use meshgate_proto::DeliveryClass;
use meshgate_topic::parse_mqtt_filter;
use tracing::debug;

use crate::codec::{self, InFilter};
use crate::conn::Conn;
use crate::protocol_error;
use crate::reason::Reason;
use crate::session::SubRecord;

impl Conn {
    pub(crate) fn on_subscribe(&mut self, pkid: u16, filters: Vec<InFilter>, sub_id: Option<u32>) {
        let broker = self.ctx.broker.clone();
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for f in filters {
            let parsed = match parse_mqtt_filter(&f.path) {
                Ok(p) => p,
                Err(e) => {
                    debug!(filter = %f.path, error = %e, "subscription refused");
                    protocol_error("invalid_filter");
                    codes.push(Reason::TopicFilterInvalid);
                    continue;
                }
            };
            if let Err(d) = broker.check_subscribe(self.session.mailbox.app(), &parsed) {
                debug!(filter = %f.path, reason = d.reason, "subscription refused by governance");
                codes.push(Reason::denied(d.kind, true));
                continue;
            }
            let granted = f.qos.min(1);
            let opts = SubOptions {
                qos: granted,
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
                sub_id,
            };
            let rec = SubRecord {
                filters: parsed.filters,
                group: parsed.group,
                opts,
            };
            self.meta_dirty |= self.session.stored();
            let mb = &self.session.mailbox;
            let previous = self
                .session
                .state
                .lock()
                .subs
                .insert(f.path.clone(), rec.clone());
            if let Some(old) = &previous {
                for nf in &old.filters {
                    broker.unsubscribe(mb.id(), nf, old.group.as_deref());
                }
            }
            for nf in &rec.filters {
                broker.subscribe(mb, nf, rec.group.as_deref(), opts);
            }
            codes.push(Reason::granted(granted));
            // Retained messages: not for shared subscriptions (MQTT 5 §4.8.2).
            let send_retained = rec.group.is_none()
                && match f.retain_handling {
                    0 => true,
                    1 => previous.is_none(),
                    _ => false,
                };
            if send_retained {
                for nf in &rec.filters {
                    let app = self.session.mailbox.app();
                    for e in broker.retained_matching(nf) {
                        if !broker.may_read(app, &e.topic) {
                            continue;
                        }
                        let q = if e.delivery == DeliveryClass::Guaranteed as i32 {
                            1
                        } else {
                            0
                        };
                        retained.push(Delivery {
                            qos: q.min(granted),
                            retain: true,
                            sub_id,
                            event: e,
                            seq: 0,
                        });
                    }
                }
            }
        }
        codec::encode_suback(self.ver, pkid, &codes, &mut self.wbuf);
        self.outq.extend(retained);
    }

    pub(crate) fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) {
        let mut existed = Vec::with_capacity(filters.len());
        for f in filters {
            let rec = self.session.state.lock().subs.remove(&f);
            existed.push(rec.is_some());
            if let Some(rec) = rec {
                self.meta_dirty |= self.session.stored();
                for nf in &rec.filters {
                    self.ctx.broker.unsubscribe(
                        self.session.mailbox.id(),
                        nf,
                        rec.group.as_deref(),
                    );
                }
            }
        }
        codec::encode_unsuback(self.ver, pkid, &existed, &mut self.wbuf);
    }
}
