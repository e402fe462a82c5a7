//! The children of a wildcard-trie node, keyed by the hash of their label.
//!
//! Most lookups miss (a topic level that no filter names at that node) and most nodes have
//! few children, so a lookup first checks a 64-bit bloom word in the node, then one group of
//! hashbrown control bytes; only a hit reads the bucket, where the key holds the label inline.
//! The caller hashes each topic level once per match and passes the hash along.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use foldhash::fast::RandomState;

/// Longest label kept inline in a key.
const INLINE: usize = 22;

/// A level's text: inline when short (nearly all levels), boxed otherwise.
#[derive(Clone, Debug)]
enum Label {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<[u8]>),
}

impl Label {
    fn new(text: &str) -> Self {
        let b = text.as_bytes();
        if b.len() > INLINE {
            return Label::Boxed(b.into());
        }
        let mut bytes = [0; INLINE];
        bytes[..b.len()].copy_from_slice(b);
        Label::Inline {
            len: b.len() as u8,
            bytes,
        }
    }

    #[inline]
    fn is(&self, text: &str) -> bool {
        let b = match self {
            Label::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Label::Boxed(b) => b,
        };
        b == text.as_bytes()
    }
}

/// A child's map key: the hash of its label and the label. Keys compare and hash by the hash
/// alone, so a lookup needs only the hash of the topic level (`Borrow<u64>`); the label then
/// confirms the hit. A label whose hash is already taken in the same map goes to
/// `Children::collided` instead, so equal hashes never share a map.
struct Key {
    hash: u64,
    label: Label,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash.hash(state);
    }
}

impl Borrow<u64> for Key {
    fn borrow(&self) -> &u64 {
        &self.hash
    }
}

/// The bloom bit of a hash: its top bits, which hashbrown's bucket index (low bits) does not
/// use.
#[inline]
fn bloom_bit(hash: u64) -> u64 {
    1 << (hash >> 58)
}

/// Passes a precomputed hash (a `u64` written once) through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `u64` and `Key`); fold anything else in for completeness.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The children of a trie node along literal (or prefix) edges, by label.
pub(crate) struct Children<T> {
    /// One bit per child, chosen by its hash: a clear bit answers "absent" without touching
    /// the map (most lookups miss, most nodes have few children). Bits are not cleared on
    /// removal (only when the node empties): a stale bit only costs a probe.
    bloom: u64,
    by_hash: HashMap<Key, T, BuildHasherDefault<PassThrough>>,
    /// Labels whose hash collided with another child's: practically never used, so boxed to
    /// keep every node small.
    #[allow(clippy::box_collection)]
    collided: Option<Box<HashMap<Box<str>, T, RandomState>>>,
}

impl<T: Default> Children<T> {
    pub(crate) fn new() -> Self {
        Self {
            bloom: 0,
            by_hash: HashMap::default(),
            collided: None,
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.collided.is_none()
    }

    /// True when the child stored under `hash` in `by_hash` is labelled `label`.
    #[inline]
    fn holds(&self, hash: u64, label: &str) -> Option<bool> {
        self.by_hash
            .get_key_value(&hash)
            .map(|(key, _)| key.label.is(label))
    }

    /// The child labelled `label`, whose hash is `hash`.
    #[inline]
    pub(crate) fn get(&self, hash: u64, label: &str) -> Option<&T> {
        if self.bloom & bloom_bit(hash) == 0 {
            return None;
        }
        if let Some((key, node)) = self.by_hash.get_key_value(&hash)
            && key.label.is(label)
        {
            return Some(node);
        }
        self.collided.as_ref()?.get(label)
    }

    pub(crate) fn get_mut(&mut self, hash: u64, label: &str) -> Option<&mut T> {
        match self.holds(hash, label) {
            Some(true) => self.by_hash.get_mut(&hash),
            _ => self.collided.as_mut()?.get_mut(label),
        }
    }

    /// The child labelled `label`, created if missing, and whether it was created.
    pub(crate) fn get_or_insert(&mut self, hash: u64, label: &str) -> (&mut T, bool) {
        self.bloom |= bloom_bit(hash);
        let in_collided = self
            .collided
            .as_ref()
            .is_some_and(|c| c.contains_key(label));
        match self.holds(hash, label) {
            Some(true) => {
                // `holds` just found the key.
                let node = self.by_hash.get_mut(&hash).expect("child exists");
                return (node, false);
            }
            None if !in_collided => {
                let key = Key {
                    hash,
                    label: Label::new(label),
                };
                return (self.by_hash.entry(key).or_default(), true);
            }
            _ => {}
        }
        let collided = self.collided.get_or_insert_with(Default::default);
        let created = !collided.contains_key(label);
        if created {
            collided.insert(Box::from(label), T::default());
        }
        // The key was inserted just above if it was missing.
        (collided.get_mut(label).expect("child exists"), created)
    }

    pub(crate) fn remove(&mut self, hash: u64, label: &str) {
        if self.holds(hash, label) == Some(true) {
            self.by_hash.remove(&hash);
        } else if let Some(collided) = &mut self.collided {
            collided.remove(label);
            if collided.is_empty() {
                self.collided = None;
            }
        }
        if self.is_empty() {
            self.bloom = 0;
        }
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &T> {
        let collided = self.collided.iter().flat_map(|c| c.values());
        self.by_hash.values().chain(collided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_hashes_keep_labels_apart() {
        let mut c: Children<u32> = Children::new();
        for (i, label) in ["a", "b", "c", &"long".repeat(10)].into_iter().enumerate() {
            let (v, created) = c.get_or_insert(7, label);
            assert!(created);
            *v = i as u32;
        }
        assert!(!c.get_or_insert(7, "b").1);
        assert_eq!(c.get(7, "a"), Some(&0));
        assert_eq!(c.get(7, "b"), Some(&1));
        assert_eq!(c.get(7, "c"), Some(&2));
        assert_eq!(c.get(7, &"long".repeat(10)), Some(&3));
        assert_eq!(c.get(7, "d"), None);
        assert_eq!(c.get(8, "a"), None);
        c.remove(7, "a");
        assert_eq!(c.get(7, "a"), None);
        assert_eq!(c.get(7, "b"), Some(&1), "found in the collision map");
        assert!(
            !c.get_or_insert(7, "c").1,
            "no duplicate after the first owner left"
        );
        assert_eq!(c.nodes().count(), 3);
        for label in ["b", "c", &"long".repeat(10)] {
            c.remove(7, label);
        }
        assert!(c.is_empty());
        assert_eq!(c.bloom, 0);
    }
}
