//! A minimal NATS client for load generation, speaking the text protocol directly: `CONNECT`,
//! `PUB`, `SUB`, `PING`/`PONG` and reading `MSG`. Like the MQTT client it batches publishes into
//! big writes so that it is never the bottleneck (async-nats' per-message futures cost more CPU
//! than nats-server itself at a million messages a second).

use anyhow::{Context as _, bail, ensure};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::inbuf::InBuf;

/// What the client sends right after the server's INFO.
const CONNECT: &[u8] = br#"CONNECT {"verbose":false,"pedantic":false,"echo":false,"lang":"rust","version":"loadgen","protocol":1,"headers":false}
"#;

/// An operation read from the server, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// A delivered message.
    Msg {
        /// Subject it was published on.
        subject: &'a [u8],
        /// Application payload.
        payload: &'a [u8],
    },
    /// Server keep-alive; must be answered with PONG.
    Ping,
    /// Answer to our PING.
    Pong,
    /// `-ERR` with its text.
    Err(&'a [u8]),
    /// INFO or +OK: nothing to do.
    Ignored,
}

/// Appends `PUB subject len` and the payload.
pub fn encode_pub(out: &mut Vec<u8>, subject: &[u8], payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.push(b' ');
    push_decimal(out, payload.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parses one operation from the front of `data`: `Ok(None)` when it is not complete yet.
pub fn parse(data: &[u8]) -> anyhow::Result<Option<(Op<'_>, usize)>> {
    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
        ensure!(data.len() < 64 * 1024, "protocol line too long");
        return Ok(None);
    };
    let line = data[..nl].strip_suffix(b"\r").unwrap_or(&data[..nl]);
    let after = nl + 1;
    if let Some(args) = line.strip_prefix(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let mut tokens = args
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|t| !t.is_empty());
        let subject = tokens.next().context("MSG without subject")?;
        let len_token = tokens.next_back().context("MSG without size")?;
        let len: usize = std::str::from_utf8(len_token)?
            .parse()
            .context("MSG size")?;
        let Some(payload) = data.get(after..after + len) else {
            return Ok(None);
        };
        if data.len() < after + len + 2 {
            return Ok(None);
        }
        return Ok(Some((Op::Msg { subject, payload }, after + len + 2)));
    }
    let op = if line == b"PING" {
        Op::Ping
    } else if line == b"PONG" {
        Op::Pong
    } else if let Some(text) = line.strip_prefix(b"-ERR") {
        Op::Err(text)
    } else if line.starts_with(b"INFO") || line == b"+OK" {
        Op::Ignored
    } else {
        bail!(
            "unexpected line from nats-server: {}",
            String::from_utf8_lossy(line)
        );
    };
    Ok(Some((op, after)))
}

/// One NATS connection.
pub struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    inbuf: InBuf,
    out: Vec<u8>,
}

impl Conn {
    /// Connects, sends CONNECT and waits for the PONG that proves the server accepted it.
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut conn = Self {
            rd,
            wr,
            inbuf: InBuf::new(256 * 1024),
            out: Vec::with_capacity(128 * 1024),
        };
        conn.out.extend_from_slice(CONNECT);
        conn.out.extend_from_slice(b"PING\r\n");
        conn.flush().await?;
        conn.await_pong().await?;
        Ok(conn)
    }

    /// Reads until PONG, failing on `-ERR`.
    async fn await_pong(&mut self) -> anyhow::Result<()> {
        loop {
            while let Some((op, n)) = parse(self.inbuf.data())? {
                match op {
                    Op::Pong => {
                        self.inbuf.consume(n);
                        return Ok(());
                    }
                    Op::Err(text) => bail!("nats-server: -ERR{}", String::from_utf8_lossy(text)),
                    Op::Ping => self.wr.write_all(b"PONG\r\n").await?,
                    Op::Msg { .. } | Op::Ignored => {}
                }
                self.inbuf.consume(n);
            }
            self.inbuf.fill(&mut self.rd).await?;
        }
    }

    /// Subscribes to every subject (sids 1..), then PINGs and waits for the PONG: once it
    /// arrives the server has registered every subscription.
    pub async fn subscribe(&mut self, subjects: &[String]) -> anyhow::Result<()> {
        for (i, subject) in subjects.iter().enumerate() {
            self.out.extend_from_slice(b"SUB ");
            self.out.extend_from_slice(subject.as_bytes());
            self.out.push(b' ');
            push_decimal(&mut self.out, i as u64 + 1);
            self.out.extend_from_slice(b"\r\n");
            if self.out.len() >= 64 * 1024 {
                self.flush().await?;
            }
        }
        self.out.extend_from_slice(b"PING\r\n");
        self.flush().await?;
        self.await_pong().await
    }

    /// Queues a PUB; [`Conn::flush`] sends it.
    pub fn push_publish(&mut self, subject: &[u8], payload: &[u8]) {
        encode_pub(&mut self.out, subject, payload);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.wr
            .write_all(&self.out)
            .await
            .context("write to nats-server")?;
        self.out.clear();
        Ok(())
    }

    /// Waits for data, then hands every complete MSG to `on_msg(subject, payload)`; answers PING.
    pub async fn read_msgs(&mut self, mut on_msg: impl FnMut(&[u8], &[u8])) -> anyhow::Result<()> {
        self.inbuf.fill(&mut self.rd).await?;
        while let Some((op, n)) = parse(self.inbuf.data())? {
            match op {
                Op::Msg { subject, payload } => on_msg(subject, payload),
                Op::Ping => self.wr.write_all(b"PONG\r\n").await?,
                Op::Err(text) => bail!("nats-server: -ERR{}", String::from_utf8_lossy(text)),
                Op::Pong | Op::Ignored => {}
            }
            self.inbuf.consume(n);
        }
        Ok(())
    }

    /// Turns the connection back into one blocking std socket (for a paced publisher thread).
    pub fn into_std(self) -> anyhow::Result<std::net::TcpStream> {
        let stream = self.rd.reunite(self.wr)?.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_encodes_and_msg_parses() {
        let mut out = Vec::new();
        encode_pub(&mut out, b"bench.one", b"hello");
        assert_eq!(out, b"PUB bench.one 5\r\nhello\r\n");
        let msg = b"MSG bench.one 1 5\r\nhello\r\nMSG a 2 reply 0\r\n\r\n";
        let (op, n) = parse(msg).unwrap().unwrap();
        assert_eq!(
            op,
            Op::Msg {
                subject: b"bench.one",
                payload: b"hello"
            }
        );
        assert_eq!(n, 26);
        let (op, m) = parse(&msg[n..]).unwrap().unwrap();
        assert_eq!(
            op,
            Op::Msg {
                subject: b"a",
                payload: b""
            }
        );
        assert_eq!(n + m, msg.len());
        for cut in 0..n {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn control_lines() {
        assert_eq!(parse(b"PING\r\n").unwrap(), Some((Op::Ping, 6)));
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Op::Ignored, 5)));
        assert_eq!(parse(b"INFO {}\r\n").unwrap(), Some((Op::Ignored, 9)));
        assert_eq!(
            parse(b"-ERR 'x'\r\n").unwrap(),
            Some((Op::Err(b" 'x'"), 10))
        );
        assert!(parse(b"BOGUS\r\n").is_err());
        let mut n = Vec::new();
        push_decimal(&mut n, 1_234_567);
        assert_eq!(n, b"1234567");
    }
}
