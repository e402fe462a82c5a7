//! The publish and subscribe rules of GOVERNANCE.md, against one [`Catalog`].

use meshgate_topic::{Filter, MqttFilter, validate_topic};
use serde::Serialize;
use thiserror::Error;

use crate::catalog::Catalog;
use crate::date::Date;
use crate::model::{Access, Channel, ChannelId};
use crate::schema::validate_payload;

/// Why a publish or a subscription was refused.
///
/// The [`Display`](std::fmt::Display) text and the [`kind`](Refusal::kind) are what the client
/// sees (each protocol maps the kind to its own code): for every [`Refusal::NotAuthorized`] they
/// are the same, so that a client cannot tell an unknown topic from a forbidden one.
/// [`reason`](Refusal::reason) tells them apart, for metrics and logs only.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The topic or filter is malformed, or a published topic has a wildcard.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// Unknown topic, or not allowed: the client is never told which.
    #[error("not authorized")]
    NotAuthorized(Denial),
    /// The channel is past its end of life.
    #[error("channel reached its end of life on {eol}")]
    PastEol {
        /// The channel's EOL date.
        eol: Date,
    },
    /// The payload does not match the channel's schema.
    #[error("payload does not match the channel schema: {0}")]
    Schema(String),
}

/// The internal reason behind [`Refusal::NotAuthorized`]; never shown to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Denial {
    /// No catalog channel has this topic.
    UnknownTopic,
    /// The app is neither the owner nor an allowed producer.
    NotWriter,
    /// The app may not read the named topic or channel.
    NotReadable,
    /// The filter names another owner's `_private` scope.
    PrivateScope,
}

impl Refusal {
    /// A stable, bounded label for metrics: `invalid_topic`, `unknown_topic`, `not_writer`,
    /// `not_readable`, `private_scope`, `past_eol` or `schema`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InvalidTopic(_) => "invalid_topic",
            Refusal::NotAuthorized(Denial::UnknownTopic) => "unknown_topic",
            Refusal::NotAuthorized(Denial::NotWriter) => "not_writer",
            Refusal::NotAuthorized(Denial::NotReadable) => "not_readable",
            Refusal::NotAuthorized(Denial::PrivateScope) => "private_scope",
            Refusal::PastEol { .. } => "past_eol",
            Refusal::Schema(_) => "schema",
        }
    }

    /// What the refusal means to the client, in protocol-neutral terms.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::InvalidTopic(_) => RefusalKind::InvalidTopic,
            Refusal::NotAuthorized(_) | Refusal::PastEol { .. } => RefusalKind::NotAuthorized,
            Refusal::Schema(_) => RefusalKind::InvalidPayload,
        }
    }
}

/// What a refusal means to the client, whatever its protocol: MQTT and HTTP map each kind to
/// their own code (MQTT 5 0x87 / 0x90 / 0x99, HTTP 403 / 400 / 422).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RefusalKind {
    /// Unknown or forbidden: the client is never told which.
    NotAuthorized,
    /// The topic or filter is malformed.
    InvalidTopic,
    /// The payload does not match the channel's schema.
    InvalidPayload,
}

/// An accepted publish.
#[derive(Clone, Copy, Debug)]
pub struct Accepted<'a> {
    /// The channel the topic belongs to.
    pub channel: &'a Channel,
    /// Set when the channel is deprecated (and not yet past its EOL): the publish is accepted
    /// but should be flagged (a warning to the client, a metric).
    pub deprecated_until: Option<Date>,
}

/// An accepted subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscribeGrant {
    /// The catalog version the decision was made against.
    pub version: u64,
    /// The channels the filter matches that the app may read at that version.
    pub readable: Vec<ChannelId>,
    /// How many channels the filter matches that the app may not read (their events are
    /// filtered out at delivery, and counted, never named).
    pub hidden: usize,
}

impl SubscribeGrant {
    /// Should the subscription be advertised to the mesh? Only when it can receive something.
    pub fn advertise(&self) -> bool {
        !self.readable.is_empty()
    }
}

/// May `app` use `name` as a consumer group, shared-subscription group or Kafka transactional
/// id? Only its own id or names below it (`<app id>.`), segment-exact (Galapagos).
pub fn group_allowed(app: &str, name: &str) -> bool {
    name.strip_prefix(app)
        .is_some_and(|rest| rest.is_empty() || (rest.len() > 1 && rest.starts_with('.')))
}

/// How one filter level relates to topics.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lvl<'a> {
    Literal(&'a str),
    Star,
    Prefix(&'a str),
    Rest,
}

fn levels(filter: &Filter) -> impl Iterator<Item = Lvl<'_>> {
    filter.as_str().split('/').map(|l| match l {
        "*" => Lvl::Star,
        ">" => Lvl::Rest,
        _ => match l.strip_suffix('*') {
            Some(p) => Lvl::Prefix(p),
            None => Lvl::Literal(l),
        },
    })
}

/// Can the filter match some topic of the channel? Channel patterns are literal levels then `*`
/// levels.
fn filter_overlaps(filter: &Filter, channel: &Channel) -> bool {
    let mut pattern = channel
        .mesh_base
        .split('/')
        .map(Some)
        .chain(channel.parameters.iter().map(|_| None));
    for level in levels(filter) {
        let Some(p) = pattern.next() else {
            return false;
        };
        let ok = match (level, p) {
            (Lvl::Rest, _) => return true,
            (Lvl::Star, _) | (_, None) => true,
            (Lvl::Literal(l), Some(p)) => l == p,
            (Lvl::Prefix(x), Some(p)) => p.starts_with(x),
        };
        if !ok {
            return false;
        }
    }
    pattern.next().is_none()
}

impl Catalog {
    /// May `app` read the concrete topic? Only catalog channels are readable: by their owner, by
    /// everyone when public, by the granted apps when protected. Allocation-free; this is the
    /// per-event, per-subscriber check at delivery.
    #[inline]
    pub fn may_read(&self, app: &str, topic: &str) -> bool {
        self.lookup(topic).is_some_and(|c| c.is_readable_by(app))
    }

    /// Checks a publish of `app` on `topic` on day `now` (steps 1-4 of GOVERNANCE.md; the
    /// payload is checked by [`Catalog::check_publish_payload`]).
    pub fn check_publish(
        &self,
        app: &str,
        topic: &str,
        now: Date,
    ) -> Result<Accepted<'_>, Refusal> {
        validate_topic(topic).map_err(|e| Refusal::InvalidTopic(e.to_string()))?;
        let channel = self
            .lookup(topic)
            .ok_or(Refusal::NotAuthorized(Denial::UnknownTopic))?;
        if !channel.is_writable_by(app) {
            return Err(Refusal::NotAuthorized(Denial::NotWriter));
        }
        match channel.eol {
            Some(eol) if now > eol => Err(Refusal::PastEol { eol }),
            eol => Ok(Accepted {
                channel,
                deprecated_until: eol,
            }),
        }
    }

    /// Checks a publish with its payload: [`Catalog::check_publish`], then the payload against
    /// the channel's schema (step 5).
    pub fn check_publish_payload(
        &self,
        app: &str,
        topic: &str,
        payload: &[u8],
        now: Date,
    ) -> Result<Accepted<'_>, Refusal> {
        let accepted = self.check_publish(app, topic, now)?;
        validate_payload(accepted.channel, payload).map_err(Refusal::Schema)?;
        Ok(accepted)
    }

    /// Checks a subscription of `app` to a native filter (MQTT filters are translated first with
    /// [`meshgate_topic::parse_mqtt_filter`]).
    ///
    /// Refused as a whole when the filter's literal levels (those before its first wildcard)
    /// reach into another owner's `_private` scope, or cover the whole name of a channel the app
    /// may not read, or when the filter is one concrete topic the app may not read. Otherwise
    /// accepted; delivery then keeps only the topics [`Catalog::may_read`] allows.
    pub fn check_subscribe(&self, app: &str, filter: &Filter) -> Result<SubscribeGrant, Refusal> {
        if filter.is_literal() {
            return match self.lookup(filter.as_str()) {
                Some(c) if c.is_readable_by(app) => Ok(self.grant(app, filter)),
                Some(_) => Err(Refusal::NotAuthorized(Denial::NotReadable)),
                None => Err(Refusal::NotAuthorized(Denial::UnknownTopic)),
            };
        }
        let text = filter.as_str();
        // The literal prefix: the levels before the first wildcard level.
        let literal_levels = levels(filter)
            .take_while(|l| matches!(l, Lvl::Literal(_)))
            .count();
        if literal_levels > 0 {
            let end = text
                .match_indices('/')
                .nth(literal_levels - 1)
                .map_or(text.len(), |(i, _)| i);
            let prefix = &text[..end];
            if let Some(owner) = self.owner_of(prefix)
                && *owner != *app
            {
                let owner_levels = owner.segments().count();
                let next = prefix.split('/').nth(owner_levels);
                if next == Some("_private") {
                    return Err(Refusal::NotAuthorized(Denial::PrivateScope));
                }
                // A channel whose whole literal name is in the prefix is named by the filter.
                let named = self.channels().iter().find(|c| {
                    c.owner == *owner.as_str()
                        && (prefix == c.mesh_base
                            || prefix
                                .strip_prefix(c.mesh_base.as_str())
                                .is_some_and(|r| r.starts_with('/')))
                });
                if let Some(c) = named
                    && !c.is_readable_by(app)
                {
                    return Err(Refusal::NotAuthorized(Denial::NotReadable));
                }
            }
        }
        Ok(self.grant(app, filter))
    }

    /// Checks an MQTT subscription translated by [`meshgate_topic::parse_mqtt_filter`].
    ///
    /// MQTT `a/#` becomes the native `a` and `a/>`: the parent level `a` only widens what `#`
    /// delivers, so the subscription is judged on its wildcard filter, and the grant covers
    /// both.
    pub fn check_subscribe_mqtt(
        &self,
        app: &str,
        filter: &MqttFilter,
    ) -> Result<SubscribeGrant, Refusal> {
        let wildcard = filter.filters.iter().find(|f| !f.is_literal());
        let judged = match (wildcard, filter.filters.as_slice()) {
            (Some(w), [_, _]) => w,
            (_, [only]) => only,
            _ => {
                return Err(Refusal::InvalidTopic(
                    "unexpected MQTT filter translation".into(),
                ));
            }
        };
        let mut grant = self.check_subscribe(app, judged)?;
        for other in filter.filters.iter().filter(|f| *f != judged) {
            let extra = self.grant(app, other);
            grant.hidden += extra.hidden;
            grant.readable.extend(extra.readable);
        }
        grant.readable.sort_unstable();
        grant.readable.dedup();
        Ok(grant)
    }

    fn grant(&self, app: &str, filter: &Filter) -> SubscribeGrant {
        let mut readable = Vec::new();
        let mut hidden = 0;
        for c in self
            .channels()
            .iter()
            .filter(|c| filter_overlaps(filter, c))
        {
            if c.is_readable_by(app) {
                readable.push(c.id);
            } else {
                hidden += 1;
            }
        }
        SubscribeGrant {
            version: self.version(),
            readable,
            hidden,
        }
    }

    /// The channels whose topics `filter` can match (for listing who subscribes to what).
    pub fn overlapping<'a>(&'a self, filter: &'a Filter) -> impl Iterator<Item = &'a Channel> + 'a {
        self.channels()
            .iter()
            .filter(move |c| filter_overlaps(filter, c))
    }

    /// Can any app read anything through this filter? Interest for which this is false is not
    /// advertised to the mesh. Since an owner reads all its channels, this is "the filter
    /// matches some catalog channel".
    pub fn advertisable(&self, filter: &Filter) -> bool {
        self.channels().iter().any(|c| filter_overlaps(filter, c))
    }

    /// Can `app` read anything through this filter? (Its own subscription's interest.)
    pub fn advertisable_for(&self, app: &str, filter: &Filter) -> bool {
        self.channels()
            .iter()
            .any(|c| c.is_readable_by(app) && filter_overlaps(filter, c))
    }

    /// The channels of a given access level.
    pub fn channels_with_access(&self, access: Access) -> impl Iterator<Item = &Channel> {
        self.channels().iter().filter(move |c| c.access == access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_belong_to_their_app() {
        assert!(group_allowed("acme.user", "acme.user"));
        assert!(group_allowed("acme.user", "acme.user.loader"));
        assert!(!group_allowed("acme.user", "acme.userprops"));
        assert!(!group_allowed("acme.user", "acme.user."));
        assert!(!group_allowed("acme.user", "acme"));
        assert!(!group_allowed("acme.user", "other"));
    }

    #[test]
    fn not_authorized_looks_the_same_whatever_the_reason() {
        let all = [
            Denial::UnknownTopic,
            Denial::NotWriter,
            Denial::NotReadable,
            Denial::PrivateScope,
        ]
        .map(Refusal::NotAuthorized);
        for r in &all {
            assert_eq!(r.to_string(), "not authorized");
            assert_eq!(r.kind(), RefusalKind::NotAuthorized);
        }
        let reasons: std::collections::HashSet<_> = all.iter().map(Refusal::reason).collect();
        assert_eq!(reasons.len(), all.len());
        assert_eq!(
            Refusal::InvalidTopic("x".into()).kind(),
            RefusalKind::InvalidTopic
        );
        assert_eq!(
            Refusal::Schema("x".into()).kind(),
            RefusalKind::InvalidPayload
        );
    }
}
