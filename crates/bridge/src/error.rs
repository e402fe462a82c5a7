//! The errors at the seams between the bridge driver and the protocol crates.

use thiserror::Error;

/// Why a sink's broker did not take (or did not acknowledge) a batch. Either way the batch is
/// written again, in order, after a backoff: a sink never skips an event it holds.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SinkError {
    /// The broker or the way to it is unavailable: down, disconnected, or silent past a
    /// deadline. Writing again soon is expected to work.
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused the records (too large, not authorized, no such destination, a
    /// nack): the same batch gets the same answer until an operator fixes the cause, so it is
    /// retried at the longest backoff and reported as refused.
    #[error("refused: {0}")]
    Rejected(String),
}

impl SinkError {
    /// Whether writing the same batch again may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable(_))
    }
}

/// Why a source stopped reading from its broker. A source reconnects after a backoff.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SourceError {
    /// The broker or the way to it is unavailable (down, disconnected, a failed poll).
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused what the source asked (not authorized, unknown topic or queue).
    #[error("refused: {0}")]
    Rejected(String),
}

/// A protocol client's error text, not classified further: an availability problem.
impl From<String> for SourceError {
    fn from(e: String) -> Self {
        SourceError::Unavailable(e)
    }
}

impl SourceError {
    /// Whether reconnecting may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Unavailable(_))
    }
}

/// Why a bridge could not start (the node refuses to start with it).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StartError {
    /// The bridge's configuration cannot be used; the message names the key.
    #[error("{0}")]
    Config(String),
    /// Its journal could not be opened.
    #[error("journal: {0}")]
    Journal(String),
}
