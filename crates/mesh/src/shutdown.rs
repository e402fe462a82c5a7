//! Shutdown of the mesh's tasks: a signal every task holds, and a drain the node waits on
//! (mini-redis's `shutdown.rs`, with tokio-util's `TaskTracker` as the drain).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// The shutdown signal as one task holds it.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the node is shutting down.
    pub(crate) fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the node shuts down (also when the node's sender is gone). Cancel safe.
    pub(crate) async fn recv(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The mesh's tasks: every long-lived task is spawned here, so that the node can wait until
/// all of them ended (links closed, queues written) before it exits.
#[derive(Clone, Debug)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    shutdown: Shutdown,
}

impl Tasks {
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown: Shutdown { rx },
        }
    }

    /// Spawns a task the drain waits for.
    pub(crate) fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(f);
    }

    /// A handle on the shutdown signal for one task.
    pub(crate) fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits until every task ended, at most `limit`; false if some were still running.
    pub(crate) async fn drain(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }
}
