//! The views of the registry for the IO layer and the admin API: the change feed, the routes,
//! the entries held ([`NodeView`]), their attributes and interest.

use std::sync::Arc;

use crate::Change;
use crate::entry::ROLE;
use crate::registry::Registry;
use crate::routes::Routes;

/// One entry as shown by the admin API (`GET /v1/mesh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub name: Arc<str>,
    /// True for this node.
    pub is_self: bool,
    /// The incarnation held.
    pub incarnation: u64,
    /// The version held.
    pub max_version: u64,
    /// The `role` attribute, if any.
    pub role: Option<String>,
    /// Reachable at the last route computation (always true for this node).
    pub reachable: bool,
    /// Shortest-path cost at the last route computation.
    pub distance: Option<u64>,
    /// Next hop at the last route computation.
    pub next_hop: Option<String>,
    /// Number of live (filter, group) interests.
    pub interest: usize,
    /// Live links as advertised by the node: (peer, cost).
    pub links: Vec<(String, u32)>,
}

impl Registry {
    /// Changes of routable remote interest since the last call, in order (see [`Change`]).
    /// Replaying them from the start gives exactly the live interest of the remote nodes
    /// reachable at the last route computation.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.refresh_routes();
        std::mem::take(&mut self.changes)
    }

    /// Shortest-path routes from this node, recomputed if the link graph changed.
    pub fn routes(&mut self) -> &Routes {
        self.refresh_routes();
        &self.routes
    }

    /// Every entry held, in name order, with reachability as of the last route computation.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.entries
            .iter()
            .map(|(name, entry)| NodeView {
                name: name.clone(),
                is_self: *name == self.me,
                incarnation: entry.incarnation,
                max_version: entry.max_version,
                role: entry.value(ROLE).map(str::to_owned),
                reachable: self.routes.is_reachable(name),
                distance: self.routes.distance(name),
                next_hop: self.routes.next_hop(name).map(str::to_owned),
                interest: entry.interest().count(),
                links: entry
                    .links()
                    .filter_map(|(peer, cost)| Some((peer.to_owned(), cost.parse().ok()?)))
                    .collect(),
            })
            .collect()
    }

    /// A live attribute (or any live item) of a node's entry.
    pub fn attr(&self, node: &str, key: &str) -> Option<&str> {
        self.entries.get(node)?.value(key)
    }

    /// Whether this node holds an entry of `node` (reachable or not, until it expires).
    pub fn holds(&self, node: &str) -> bool {
        self.entries.contains_key(node)
    }

    /// Interest of `node` as (filter, group) pairs.
    pub fn interest_of(&self, node: &str) -> Vec<(String, Option<String>)> {
        self.entries.get(node).map_or_else(Vec::new, |e| {
            e.interest()
                .map(|(f, g)| (f.to_owned(), g.map(str::to_owned)))
                .collect()
        })
    }

    /// Number of entries held, this node's own included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: the registry holds at least this node's entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The feed's addition (`added`) or removal of one interest of `node`.
pub(crate) fn interest_change(
    added: bool,
    node: &Arc<str>,
    filter: &str,
    group: Option<&str>,
) -> Change {
    let (node, filter, group) = (node.clone(), filter.to_owned(), group.map(str::to_owned));
    if added {
        Change::InterestAdded {
            node,
            filter,
            group,
        }
    } else {
        Change::InterestRemoved {
            node,
            filter,
            group,
        }
    }
}
