//! The router's trie behind a read-write lock, with its generation published outside the lock:
//! a publisher whose match cache holds the result for the current generation routes without
//! touching the lock (an uncontended read lock is still an atomic read-modify-write on a line
//! every publisher shares).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use meshgate_topic::Trie;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::mailbox::SessionId;
use crate::router::Target;

/// The trie of every subscriber, local and remote.
pub(crate) struct SharedTrie {
    lock: RwLock<Trie<SessionId, Target>>,
    /// The trie's generation as of the last write that ended.
    generation: AtomicU64,
    id: u64,
}

impl SharedTrie {
    pub(crate) fn new() -> Self {
        let trie = Trie::new();
        Self {
            generation: AtomicU64::new(trie.generation()),
            id: trie.id(),
            lock: RwLock::new(trie),
        }
    }

    /// The trie's identity, for match caches.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The generation of the last completed write. A cached match of this generation is the
    /// trie's answer as of that write.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Trie<SessionId, Target>> {
        self.lock.read()
    }

    /// The trie for writing; its new generation is published when the guard is dropped.
    pub(crate) fn write(&self) -> TrieWrite<'_> {
        TrieWrite {
            guard: self.lock.write(),
            generation: &self.generation,
        }
    }
}

/// A write guard that publishes the trie's generation when it is dropped.
pub(crate) struct TrieWrite<'a> {
    guard: RwLockWriteGuard<'a, Trie<SessionId, Target>>,
    generation: &'a AtomicU64,
}

impl Deref for TrieWrite<'_> {
    type Target = Trie<SessionId, Target>;

    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl DerefMut for TrieWrite<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

impl Drop for TrieWrite<'_> {
    fn drop(&mut self) {
        // Still under the lock: a reader that sees this generation finds the trie written.
        self.generation
            .store(self.guard.generation(), Ordering::Release);
    }
}
