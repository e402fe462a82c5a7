//! A growable read buffer for the hand-rolled wire clients: fill from a socket, parse complete
//! frames in place, consume them, keep the partial tail.

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Bytes read from a socket and not yet parsed.
pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    /// An empty buffer that reads up to `capacity` bytes per call (grows for larger frames).
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// The unparsed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops `n` parsed bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads at least one more byte; a closed connection is an error.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> anyhow::Result<usize> {
        // Keep a big free tail so that one read can take many frames: the load generator must
        // not be the bottleneck.
        let min_free = self.buf.len() / 4;
        if self.buf.len() - self.end < min_free {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < min_free {
                let doubled = self.buf.len() * 2;
                self.buf.resize(doubled, 0);
            }
        }
        let n = reader
            .read(&mut self.buf[self.end..])
            .await
            .context("read from broker")?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        self.end += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_partial_tail_and_grows() {
        let mut buf = InBuf::new(8);
        let mut src: &[u8] = b"0123456789abcdef";
        buf.fill(&mut src).await.unwrap();
        assert_eq!(buf.data(), b"01234567");
        buf.consume(6);
        buf.fill(&mut src).await.unwrap();
        assert_eq!(&buf.data()[..2], b"67");
        while !src.is_empty() {
            buf.fill(&mut src).await.unwrap();
        }
        assert_eq!(buf.data(), b"6789abcdef");
        let mut empty: &[u8] = b"";
        assert!(buf.fill(&mut empty).await.is_err());
    }
}
