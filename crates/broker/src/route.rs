//! Routing one event: the match, plain delivery, queue groups, and forwarding to the mesh.
//!
//! Two entry points share the steps: [`Broker::route`] for an event published on this node
//! (plain subscribers, every matching queue group, then remote nodes), and
//! [`Broker::deliver_from_mesh`] for an event that arrived over a link (plain subscribers and
//! the queue groups the origin picked this node for). The second never calls the forwarding
//! step, so an event from the mesh is never forwarded again by the router: that holds by
//! construction, not by a flag.

use std::sync::Arc;

use meshgate_proto::Envelope;
use meshgate_topic::{GroupMatch, MatchCache};

use crate::flow::Congestion;
use crate::mailbox::{Delivery, Mailbox, SessionId};
use crate::meter::{LocalMeter, Metered};
use crate::policy::Policy;
use crate::publisher::{Publisher, queue};
use crate::router::{Broker, MeshHook, REMOTE_KEY, RemoteDest, SubOptions, Target};

/// A local member a queue group may deliver to.
type Member<'a> = (&'a Arc<Mailbox>, &'a SubOptions);

impl Broker {
    /// Delivers an event that arrived from the mesh to this node's own subscribers: every plain
    /// subscriber, and one member of each listed queue group. Never forwards. Returns the number
    /// of mailboxes it entered, and the commit ticket of the copies it stored.
    pub fn deliver_from_mesh(
        &self,
        p: &mut Publisher,
        event: &Arc<Envelope>,
        groups: &[(String, String)],
    ) -> (usize, u64) {
        if event.retain {
            let _ = self.retain(event);
        }
        let qos = u8::from(event.delivery == meshgate_proto::DeliveryClass::Guaranteed as i32);
        p.ticket = 0;
        let mut cache = self.take_cache(p);
        let m = self.lookup(&mut cache, &event.topic);
        let local = sort_by_session(m.subscribers(), &mut p.order);
        let mut routed = self.deliver_plain(p, event, qos, m.subscribers(), local);
        for g in m.groups() {
            let listed = groups
                .iter()
                .any(|(name, f)| name == g.group && f == g.filter);
            if listed && let Some(member) = self.local_member(p, &g, &event.topic) {
                routed += self.deliver_to_member(p, event, qos, member);
            }
        }
        p.cache = Some(cache);
        p.tally.routed += routed as u64;
        (routed, p.ticket)
    }

    /// Routes an event published on this node: plain subscribers, one member of every
    /// matching queue group (local if one is online, else the nearest remote node), and one
    /// copy towards each remote node with interest. Returns the number of mailboxes it entered;
    /// the remote destinations are left in `p.remote`.
    pub(crate) fn route(&self, p: &mut Publisher, event: &Arc<Envelope>, qos: u8) -> usize {
        p.remote.clear();
        let mut cache = self.take_cache(p);
        let m = self.lookup(&mut cache, &event.topic);
        let local = sort_by_session(m.subscribers(), &mut p.order);
        let mut routed = self.deliver_plain(p, event, qos, m.subscribers(), local);
        remote_nodes(m.subscribers(), &p.order[local..], &mut p.remote);
        let mesh = self.shared.mesh.get();
        for g in m.groups() {
            routed += self.deliver_to_group(p, event, qos, &g, mesh);
        }
        p.cache = Some(cache);
        if !p.remote.is_empty()
            && let Some(mesh) = mesh
        {
            self.forward(p, event, &**mesh);
        }
        routed
    }

    /// Notes in `flow` every queue an event on `topic` would enter now that is congested (its
    /// subscribers' mailboxes, the links towards its remote destinations): a publisher that can
    /// be told to come back later (REST) waits for them before it publishes, instead of after.
    pub fn congested_for(&self, topic: &str, flow: &mut Congestion) {
        let mut m = meshgate_topic::Matches::new();
        let mut remote = Vec::new();
        {
            let trie = self.shared.trie.read();
            trie.match_into(topic, &mut m);
        }
        let members = m.groups().flat_map(|g| g.members.iter());
        for (_, t) in m.subscribers().iter().chain(members) {
            match t {
                Target::Local { mailbox, .. } => {
                    if !mailbox.valve().has_room() {
                        flow.note(mailbox.valve());
                    }
                }
                Target::Remote { node } => {
                    if !remote.iter().any(|d: &RemoteDest| d.node == *node) {
                        remote.push(RemoteDest {
                            node: node.clone(),
                            groups: Vec::new(),
                        });
                    }
                }
            }
        }
        if let Some(mesh) = self.shared.mesh.get()
            && !remote.is_empty()
        {
            mesh.congested_links(&remote, flow);
        }
    }

    /// The matches of `topic`: from the cache when it holds them for the trie's current
    /// generation (no lock taken), else computed under the trie's read lock.
    fn lookup<'c>(
        &self,
        cache: &'c mut MatchCache<SessionId, Target>,
        topic: &str,
    ) -> &'c meshgate_topic::Matches<SessionId, Target> {
        let trie = &self.shared.trie;
        cache.lookup_with(trie.id(), trie.generation(), topic, |topic, out| {
            trie.read().match_into(topic, out)
        })
    }

    /// The publisher's match cache, made on first use; put it back after the match.
    fn take_cache(&self, p: &mut Publisher) -> MatchCache<SessionId, Target> {
        p.cache
            .take()
            .unwrap_or_else(|| MatchCache::new(self.shared.config.match_cache_slots))
    }

    /// Delivers to the local plain subscribers (`order[..local]`), one copy per session even
    /// when several of its filters match, at the highest QoS of those filters (MQTT 5 §3.3.4).
    fn deliver_plain(
        &self,
        p: &mut Publisher,
        event: &Arc<Envelope>,
        qos: u8,
        subs: &[(SessionId, Target)],
        local: usize,
    ) -> usize {
        let policy = self.shared.policy.get();
        let order = std::mem::take(&mut p.order);
        let mut routed = 0;
        let mut i = 0;
        while i < local {
            let (sid, first) = order[i];
            i += 1;
            let Target::Local { mailbox, opts, .. } = &subs[first as usize].1 else {
                continue;
            };
            let mut q = opts.qos;
            while i < local && order[i].0 == sid {
                if let Target::Local { opts, .. } = &subs[order[i].1 as usize].1 {
                    q = q.max(opts.qos);
                }
                i += 1;
            }
            if opts.no_local && p.session == Some(sid) {
                continue;
            }
            if !readable(policy, mailbox, &event.topic) {
                p.tally.unreadable += 1;
                continue;
            }
            if self.deliver(p, mailbox, opts, event, qos.min(q)) {
                routed += 1;
            }
        }
        p.order = order;
        routed
    }

    /// Delivers to one member of a queue group matched at the origin: a local member that is
    /// online, else the nearest remote node with a member (added to `p.remote` with the
    /// group), else a local member that is offline (its session queues the event).
    fn deliver_to_group(
        &self,
        p: &mut Publisher,
        event: &Arc<Envelope>,
        qos: u8,
        g: &GroupMatch<'_, SessionId, Target>,
        mesh: Option<&Arc<dyn MeshHook>>,
    ) -> usize {
        if g.members.is_empty() {
            return 0;
        }
        let (online, offline) = self.local_candidates(p, g, &event.topic);
        if online.is_none()
            && let Some(mesh) = mesh
            && pick_remote(p, g, &**mesh)
        {
            return 0;
        }
        match online.or(offline) {
            Some(member) => self.deliver_to_member(p, event, qos, member),
            None => 0,
        }
    }

    /// A local member of a group the origin picked this node for: online first, else offline.
    fn local_member<'a>(
        &self,
        p: &mut Publisher,
        g: &GroupMatch<'a, SessionId, Target>,
        topic: &str,
    ) -> Option<Member<'a>> {
        if g.members.is_empty() {
            return None;
        }
        let (online, offline) = self.local_candidates(p, g, topic);
        online.or(offline)
    }

    /// The first online and the first offline local member of a group that may read `topic`,
    /// starting at the publisher's round-robin position.
    fn local_candidates<'a>(
        &self,
        p: &mut Publisher,
        g: &GroupMatch<'a, SessionId, Target>,
        topic: &str,
    ) -> (Option<Member<'a>>, Option<Member<'a>>) {
        let policy = self.shared.policy.get();
        p.rr = p.rr.wrapping_add(1);
        let n = g.members.len();
        let start = p.rr % n;
        let mut offline = None;
        for k in 0..n {
            let Target::Local { mailbox, opts, .. } = &g.members[(start + k) % n].1 else {
                continue;
            };
            // A member whose app may not read the event is no candidate.
            if !readable(policy, mailbox, topic) {
                continue;
            }
            if mailbox.is_online() {
                return (Some((mailbox, opts)), offline);
            }
            offline.get_or_insert((mailbox, opts));
        }
        (None, offline)
    }

    /// Delivers to the member a group picked; 1 if the event entered its mailbox or journal.
    fn deliver_to_member(
        &self,
        p: &mut Publisher,
        event: &Arc<Envelope>,
        qos: u8,
        (mailbox, opts): Member<'_>,
    ) -> usize {
        usize::from(self.deliver(p, mailbox, opts, event, qos.min(opts.qos)))
    }

    /// Queues one copy for `mailbox` (see [`deliver`]) and meters it.
    fn deliver(
        &self,
        p: &mut Publisher,
        mailbox: &Arc<Mailbox>,
        opts: &SubOptions,
        event: &Arc<Envelope>,
        qos: u8,
    ) -> bool {
        if !deliver(mailbox, opts, event, qos, p) {
            return false;
        }
        if self.shared.meter.get().is_some() {
            delivered(&mut p.meter, mailbox, event);
        }
        true
    }

    /// Hands the event to the mesh for the remote destinations in `p.remote` (once per
    /// publish), and meters each app's share of the links it leaves by.
    fn forward(&self, p: &mut Publisher, event: &Arc<Envelope>, mesh: &dyn MeshHook) {
        let ticket = mesh.forward(event, &p.remote, &mut p.congestion);
        p.ticket = p.ticket.max(ticket);
        p.tally.forwarded += 1;
        if self.shared.meter.get().is_none() {
            return;
        }
        let mut peers = std::mem::take(&mut p.peers);
        peers.clear();
        mesh.next_hops(&p.remote, &mut peers);
        let app = Some(event.publisher_app.as_str()).filter(|a| !a.is_empty());
        let bytes = prost::Message::encoded_len(&**event) as u64;
        for peer in &peers {
            p.meter
                .add(app, &event.topic, &Metered::Link(peer.clone()), bytes);
        }
        p.peers = peers;
    }
}

/// Sorts the matched subscribers by session into `order` as (session, index) pairs; returns how
/// many are local (remote nodes' keys have the top bit set, so they sort last). Sorting a reused
/// scratch list keeps this O(n log n) and allocation-free at any fan-out.
fn sort_by_session(subs: &[(SessionId, Target)], order: &mut Vec<(SessionId, u32)>) -> usize {
    order.clear();
    order.extend(
        subs.iter()
            .enumerate()
            .map(|(i, (sid, _))| (*sid, i as u32)),
    );
    if order.len() > 1 {
        order.sort_unstable();
    }
    order.partition_point(|(sid, _)| sid.0 & REMOTE_KEY == 0)
}

/// Adds one destination per remote node among the matched subscribers (`remote` part of the
/// sorted order; a node's several filters give one destination).
fn remote_nodes(
    subs: &[(SessionId, Target)],
    remote: &[(SessionId, u32)],
    out: &mut Vec<RemoteDest>,
) {
    let mut last = None;
    for &(sid, i) in remote {
        if last == Some(sid) {
            continue;
        }
        last = Some(sid);
        if let Target::Remote { node } = &subs[i as usize].1 {
            out.push(RemoteDest {
                node: node.clone(),
                groups: Vec::new(),
            });
        }
    }
}

/// Picks the nearest remote node with a member of the group and adds the group to its
/// destination in `p.remote`; false if no remote node has one.
fn pick_remote(
    p: &mut Publisher,
    g: &GroupMatch<'_, SessionId, Target>,
    mesh: &dyn MeshHook,
) -> bool {
    let mut candidates: Vec<&str> = Vec::new();
    let mut nodes: Vec<&Arc<str>> = Vec::new();
    for (_, t) in g.members {
        if let Target::Remote { node } = t {
            candidates.push(node);
            nodes.push(node);
        }
    }
    let Some(k) = mesh.nearest(&candidates, p.rr) else {
        return false;
    };
    let node = nodes[k];
    let gref = (Arc::<str>::from(g.group), Arc::<str>::from(g.filter));
    match p.remote.iter_mut().find(|d| &d.node == node) {
        Some(d) => d.groups.push(gref),
        None => p.remote.push(RemoteDest {
            node: node.clone(),
            groups: vec![gref],
        }),
    }
    true
}

/// Whether the app of `mailbox` may read `topic` (always without a policy).
fn readable(policy: Option<&Arc<dyn Policy>>, mailbox: &Mailbox, topic: &str) -> bool {
    policy.is_none_or(|pol| pol.may_read(mailbox.app(), topic))
}

/// Meters a copy handed to `mailbox`, on its app's account.
fn delivered(meter: &mut LocalMeter, mailbox: &Mailbox, event: &Envelope) {
    meter.add(
        mailbox.app(),
        &event.topic,
        &Metered::Delivered,
        event.payload.len() as u64,
    );
}

/// Queues `event` for `mailbox`; true if it entered the mailbox or the session's journal. For a
/// batched publisher, deliveries are held for [`Broker::flush_held`] instead and count as
/// delivered.
fn deliver(
    mailbox: &Arc<Mailbox>,
    opts: &SubOptions,
    event: &Arc<Envelope>,
    qos: u8,
    p: &mut Publisher,
) -> bool {
    let mut d = Delivery {
        event: event.clone(),
        qos,
        retain: opts.retain_as_published && event.retain,
        sub_id: opts.sub_id,
        seq: 0,
    };
    // A batched publisher holds every delivery until the end of its read batch, so that each
    // session's share of the batch is queued with one lock and one wake-up (and a journaled
    // session's is stored with one write). QoS 0 to an offline journaled session is refused
    // below as before (and so not counted): nothing of it can be out of order.
    if p.batched && (mailbox.journal().is_none() || qos > 0 || mailbox.is_online()) {
        p.held.push((mailbox.clone(), d));
        return true;
    }
    // A persistent session's QoS 1 delivery is stored before the publisher hears back.
    if qos > 0
        && let Some(journal) = mailbox.journal()
    {
        match journal.append(&d.encode()) {
            Ok((seq, t)) => {
                d.seq = seq;
                p.ticket = p.ticket.max(t);
            }
            Err(e) => tracing::warn!(error = %e, "cannot store a delivery; kept in memory"),
        }
    }
    queue(mailbox, d, &mut p.tally, &mut p.congestion)
}
