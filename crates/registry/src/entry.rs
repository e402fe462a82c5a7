//! One node's entry: versioned items with tombstones, the key grammar, and the deltas that bring
//! a peer up to date from a given version.

use std::collections::BTreeMap;
use std::ops::Bound;

use meshgate_proto::v1;
use meshgate_topic::Filter;

/// Prefix of plain interest keys: `sub/<filter>`.
pub(crate) const SUB: &str = "sub/";
/// Prefix of queue-group interest keys: `q/<group>/<filter>`.
pub(crate) const QUEUE: &str = "q/";
/// Prefix of link keys: `link/<peer>`, value = cost in decimal.
pub(crate) const LINK: &str = "link/";
/// The role attribute.
pub(crate) const ROLE: &str = "role";

/// One versioned item of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) value: String,
    /// The owner's version at which the item last changed.
    pub(crate) version: u64,
    /// A tombstone: the key was deleted at `version`.
    pub(crate) deleted: bool,
}

/// What this node holds of one node's entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) incarnation: u64,
    /// Every change up to this version has been applied (or is covered by a reset).
    pub(crate) max_version: u64,
    /// Tombstones with versions up to here may be missing (garbage-collected, or never received
    /// because a reset carried the entry): a peer behind this version needs a reset.
    pub(crate) gc_floor: u64,
    pub(crate) items: BTreeMap<String, Item>,
    /// Since when (local time) the node is unreachable, as seen at the last tick.
    pub(crate) unreachable_since: Option<u64>,
}

impl Entry {
    /// An empty entry at version 0.
    pub(crate) fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            max_version: 0,
            gc_floor: 0,
            items: BTreeMap::new(),
            unreachable_since: None,
        }
    }

    /// Builds the entry a full delta (from 0, or a reset) describes.
    pub(crate) fn from_delta(nd: &v1::NodeDelta) -> Self {
        let mut entry = Self::new(nd.incarnation);
        entry.max_version = nd.to_version;
        if nd.reset {
            entry.gc_floor = nd.to_version;
        }
        for kv in &nd.items {
            if nd.reset && kv.deleted {
                continue;
            }
            entry.items.insert(kv.key.clone(), Item::from(kv));
        }
        entry
    }

    /// Live (non-deleted) items.
    pub(crate) fn live(&self) -> impl Iterator<Item = (&str, &Item)> {
        self.items
            .iter()
            .filter(|(_, item)| !item.deleted)
            .map(|(key, item)| (key.as_str(), item))
    }

    /// The value of a live item.
    pub(crate) fn value(&self, key: &str) -> Option<&str> {
        self.items
            .get(key)
            .filter(|item| !item.deleted)
            .map(|item| item.value.as_str())
    }

    /// Live, valid interest: (filter, group).
    pub(crate) fn interest(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.live().filter_map(|(key, _)| parse_interest(key))
    }

    /// Live links: (peer, cost text).
    pub(crate) fn links(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items
            .range::<str, _>((Bound::Included(LINK), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(LINK))
            .filter(|(_, item)| !item.deleted)
            .map(|(key, item)| (&key[LINK.len()..], item.value.as_str()))
    }

    /// The deltas that bring a holder of this entry at version `from` up to `max_version`, in
    /// chunks of at most `max_items` items. A holder behind `gc_floor` may lack tombstones we no
    /// longer have: it receives the live entry instead, the first chunk marked `reset`.
    pub(crate) fn deltas(&self, node: &str, from: u64, max_items: usize) -> Vec<v1::NodeDelta> {
        if from >= self.max_version {
            return Vec::new();
        }
        let reset = from < self.gc_floor;
        let mut items: Vec<(&String, &Item)> = self
            .items
            .iter()
            .filter(|(_, item)| {
                if reset {
                    !item.deleted
                } else {
                    item.version > from
                }
            })
            .collect();
        items.sort_unstable_by_key(|(_, item)| item.version);
        let max_items = max_items.max(1);
        let mut out = Vec::with_capacity(items.len() / max_items + 1);
        let mut start = 0;
        let mut prev = if reset { 0 } else { from };
        loop {
            let end = (start + max_items).min(items.len());
            let last = end == items.len();
            // A chunk ends at its last item's version: versions between that one and the next
            // item's were overwritten since, so the next chunk covers them.
            let to = if last {
                self.max_version
            } else {
                items[end - 1].1.version
            };
            out.push(v1::NodeDelta {
                node: node.to_owned(),
                incarnation: self.incarnation,
                from_version: prev,
                to_version: to,
                reset: reset && start == 0,
                items: items[start..end]
                    .iter()
                    .map(|(key, item)| v1::KeyValue {
                        key: (*key).clone(),
                        value: item.value.clone(),
                        version: item.version,
                        deleted: item.deleted,
                    })
                    .collect(),
            });
            if last {
                return out;
            }
            prev = to;
            start = end;
        }
    }
}

impl From<&v1::KeyValue> for Item {
    fn from(kv: &v1::KeyValue) -> Self {
        Item {
            value: if kv.deleted {
                String::new()
            } else {
                kv.value.clone()
            },
            version: kv.version,
            deleted: kv.deleted,
        }
    }
}

/// Checks that a delta received from the network is well formed: versions of its items inside
/// (from_version, to_version] (or up to to_version for a reset), no version 0.
pub(crate) fn well_formed(nd: &v1::NodeDelta) -> bool {
    if nd.node.is_empty() || nd.to_version == 0 || nd.to_version < nd.from_version {
        return false;
    }
    let low = if nd.reset { 0 } else { nd.from_version };
    nd.items
        .iter()
        .all(|kv| kv.version > low && kv.version <= nd.to_version)
}

/// The item key of an interest.
pub(crate) fn interest_key(filter: &str, group: Option<&str>) -> String {
    match group {
        None => format!("{SUB}{filter}"),
        Some(group) => format!("{QUEUE}{group}/{filter}"),
    }
}

/// (filter, group) of an interest key, if it is one and names a valid filter and group.
pub(crate) fn parse_interest(key: &str) -> Option<(&str, Option<&str>)> {
    let (filter, group) = if let Some(filter) = key.strip_prefix(SUB) {
        (filter, None)
    } else {
        let (group, filter) = key.strip_prefix(QUEUE)?.split_once('/')?;
        if !valid_group(group) {
            return None;
        }
        (filter, Some(group))
    };
    Filter::parse(filter).is_ok().then_some((filter, group))
}

/// True for a key with a meaning of its own (interest, links), which `set_attr` refuses.
pub(crate) fn is_reserved(key: &str) -> bool {
    key.starts_with(SUB) || key.starts_with(QUEUE) || key.starts_with(LINK)
}

/// A queue group name: not empty, no `/`.
pub(crate) fn valid_group(group: &str) -> bool {
    !group.is_empty() && !group.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(items: &[(&str, u64, bool)], max: u64) -> Entry {
        let mut e = Entry::new(1);
        e.max_version = max;
        for &(key, version, deleted) in items {
            e.items.insert(
                key.to_owned(),
                Item {
                    value: String::new(),
                    version,
                    deleted,
                },
            );
        }
        e
    }

    #[test]
    fn interest_keys_round_trip() {
        assert_eq!(
            parse_interest(&interest_key("a/*", None)),
            Some(("a/*", None))
        );
        assert_eq!(
            parse_interest(&interest_key("a/b*/>", Some("g"))),
            Some(("a/b*/>", Some("g")))
        );
        assert_eq!(parse_interest("q/g"), None);
        assert_eq!(parse_interest("q//a"), None);
        assert_eq!(parse_interest("sub/"), None);
        assert_eq!(parse_interest("sub/a/>/b"), None);
        assert_eq!(parse_interest("role"), None);
        assert!(is_reserved("link/x") && !is_reserved("mqtt"));
    }

    #[test]
    fn deltas_are_chunked_by_version() {
        let e = entry(
            &[("sub/a", 2, false), ("sub/b", 5, true), ("sub/c", 7, false)],
            7,
        );
        let all = e.deltas("n", 0, 10);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].from_version, all[0].to_version), (0, 7));
        assert_eq!(all[0].items.len(), 3);
        let chunks = e.deltas("n", 1, 1);
        let bounds: Vec<_> = chunks
            .iter()
            .map(|d| (d.from_version, d.to_version, d.items.len()))
            .collect();
        assert_eq!(bounds, [(1, 2, 1), (2, 5, 1), (5, 7, 1)]);
        assert!(e.deltas("n", 7, 10).is_empty());
        let tail = e.deltas("n", 5, 10);
        assert_eq!(tail[0].items[0].key, "sub/c");
    }

    #[test]
    fn behind_the_gc_floor_gets_a_reset_of_live_items() {
        let mut e = entry(&[("sub/a", 2, false), ("sub/c", 7, false)], 7);
        e.gc_floor = 5; // the tombstone of sub/b at 5 is gone
        let d = e.deltas("n", 3, 10);
        assert_eq!(d.len(), 1);
        assert!(d[0].reset);
        assert_eq!((d[0].from_version, d[0].to_version), (0, 7));
        assert_eq!(d[0].items.len(), 2);
        let chunks = e.deltas("n", 3, 1);
        assert!(chunks[0].reset && !chunks[1].reset);
        assert_eq!(chunks[1].from_version, chunks[0].to_version);
        assert!(!e.deltas("n", 5, 10)[0].reset);
    }

    #[test]
    fn malformed_deltas_are_refused() {
        let kv = |version| v1::KeyValue {
            key: "k".into(),
            value: String::new(),
            version,
            deleted: false,
        };
        let nd = |from, to, reset, items| v1::NodeDelta {
            node: "n".into(),
            incarnation: 1,
            from_version: from,
            to_version: to,
            reset,
            items,
        };
        assert!(well_formed(&nd(2, 4, false, vec![kv(3), kv(4)])));
        assert!(!well_formed(&nd(2, 4, false, vec![kv(2)])));
        assert!(!well_formed(&nd(2, 4, false, vec![kv(5)])));
        assert!(well_formed(&nd(0, 4, true, vec![kv(1)])));
        assert!(!well_formed(&nd(5, 4, false, vec![])));
    }
}
