//! The handshake: Hello frames, the checks a peer must pass, duplicate links collapsed, and
//! the accept and dial loops that make connections for the life of the node.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshgate_proto::LINK_PROTOCOL_VERSION;
use meshgate_proto::v1::{Frame, Hello, frame::Body};
use rustls::pki_types::CertificateDer;
use tracing::{debug, warn};

use crate::link::{self, Link, LinkError};
use crate::run::run_link;
use crate::shutdown::Shutdown;
use crate::state::Inner;
use meshgate_tls as tls;

impl Inner {
    pub(crate) fn hello(&self) -> Frame {
        Frame {
            body: Some(Body::Hello(Hello {
                node: self.name.to_string(),
                incarnation: self.incarnation,
                protocol_version: LINK_PROTOCOL_VERSION,
                capabilities: Vec::new(),
                role: self.cfg.role.as_str().to_string(),
            })),
        }
    }

    /// Checks the peer's Hello against its certificate and this node.
    pub(crate) fn check_hello(&self, conn: &quinn::Connection, h: &Hello) -> Result<(), LinkError> {
        if h.protocol_version != LINK_PROTOCOL_VERSION {
            return Err(LinkError::Refused(format!(
                "unsupported link protocol version {} (this node speaks {LINK_PROTOCOL_VERSION})",
                h.protocol_version
            )));
        }
        if *h.node == *self.name {
            return Err(LinkError::Refused(format!(
                "the peer has this node's own name {:?}",
                h.node
            )));
        }
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
        let named = certs
            .as_ref()
            .and_then(|c| c.first())
            .is_some_and(|c| tls::cert_names(c, &h.node));
        if !named {
            return Err(LinkError::Refused(format!(
                "the peer's certificate does not name node {:?}",
                h.node
            )));
        }
        Ok(())
    }

    /// Adds a link, collapsing duplicates between the same pair of nodes: both ends keep the
    /// connection dialled by the node with the smaller name (or the newer incarnation of the
    /// peer). Returns false if this connection is the duplicate.
    pub(crate) fn register(&self, link: &Arc<Link>) -> bool {
        let mut links = self.links.write();
        if let Some(old) = links.get(&link.peer) {
            let replace = if link.incarnation != old.incarnation {
                link.incarnation > old.incarnation
            } else if link.dialled == old.dialled {
                false
            } else {
                // Keep the connection dialled by the smaller name.
                let new_dialler_is_me = link.dialled;
                let me_smaller = *self.name < *link.peer;
                new_dialler_is_me == me_smaller
            };
            if !replace {
                return false;
            }
            old.close("duplicate link");
        }
        links.insert(link.peer.clone(), link.clone());
        true
    }
}

/// Accepts incoming connections for the life of the node.
pub(crate) async fn accept_loop(inner: Arc<Inner>, mut shutdown: Shutdown) {
    loop {
        let incoming = tokio::select! {
            i = inner.endpoint.accept() => i,
            _ = shutdown.recv() => break,
        };
        let Some(incoming) = incoming else { break };
        let i = inner.clone();
        inner.tasks.spawn(async move {
            let inner = i;
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    inner.counters.refused_links.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, error = %e, "mesh connection refused during the handshake");
                    return;
                }
            };
            if let Err(e) = serve_accepted(&inner, conn.clone()).await {
                inner.counters.refused_links.fetch_add(1, Ordering::Relaxed);
                warn!(%remote, error = %e, "mesh link refused");
                conn.close(1u32.into(), e.to_string().as_bytes());
            }
        });
    }
    inner.endpoint.close(0u32.into(), b"node shutting down");
}

async fn serve_accepted(inner: &Arc<Inner>, conn: quinn::Connection) -> Result<(), LinkError> {
    let timeout = Duration::from_secs(5);
    let (mut send, recv) = tokio::time::timeout(timeout, conn.accept_bi())
        .await
        .map_err(|_| LinkError::Timeout)??;
    let mut reader = link::FrameReader::new(recv, inner.cfg.max_frame_bytes);
    let hello = link::read_hello(&mut reader, timeout).await?;
    inner.check_hello(&conn, &hello)?;
    link::write_frame(&mut send, &inner.hello()).await?;
    run_link(inner.clone(), conn, hello, false, send, reader).await;
    Ok(())
}

/// Dials `addr` for the life of the node: retries with backoff and jitter, and dials again
/// when the link goes down.
pub(crate) async fn dial_loop(inner: Arc<Inner>, addr: String, mut shutdown: Shutdown) {
    let initial = Duration::from_millis(100);
    let mut backoff = initial;
    loop {
        if shutdown.is_shutdown() {
            return;
        }
        // While a link to the same node is up (it dialled us), do not dial a duplicate.
        let known = inner.dials.lock().get(&addr).and_then(|d| d.peer.clone());
        if let Some(p) = &known
            && inner.links.read().contains_key(p)
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                _ = shutdown.recv() => return,
            }
        }
        let started = Instant::now();
        let result = dial_once(&inner, &addr).await;
        let error = match result {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        };
        {
            let mut dials = inner.dials.lock();
            let d = dials.entry(addr.clone()).or_default();
            d.connected = false;
            d.attempts += 1;
            if let Some(e) = &error {
                d.last_error = Some(e.clone());
            }
        }
        if let Some(e) = &error {
            debug!(%addr, error = %e, "dial failed");
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = initial;
        }
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        let wait = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(inner.cfg.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// One connection attempt; returns when the link it made goes down.
async fn dial_once(inner: &Arc<Inner>, addr: &str) -> Result<(), LinkError> {
    let target = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| LinkError::Refused(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| LinkError::Refused(format!("{addr} resolves to nothing")))?;
    let connecting = inner
        .endpoint
        .connect_with(inner.client.clone(), target, "meshgate")
        .map_err(|e| LinkError::Refused(e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| LinkError::Timeout)??;
    let (mut send, recv) = conn.open_bi().await?;
    link::write_frame(&mut send, &inner.hello()).await?;
    let mut reader = link::FrameReader::new(recv, inner.cfg.max_frame_bytes);
    let hello = match link::read_hello(&mut reader, Duration::from_secs(5)).await {
        Ok(h) => h,
        Err(e) => {
            // The peer may have closed with a reason: report that one.
            if let Some(reason) = conn.close_reason() {
                return Err(LinkError::Connection(reason));
            }
            return Err(e);
        }
    };
    if let Err(e) = inner.check_hello(&conn, &hello) {
        inner.counters.refused_links.fetch_add(1, Ordering::Relaxed);
        warn!(%addr, error = %e, "mesh link refused");
        conn.close(1u32.into(), e.to_string().as_bytes());
        return Err(e);
    }
    {
        let mut dials = inner.dials.lock();
        let d = dials.entry(addr.to_string()).or_default();
        d.peer = Some(hello.node.as_str().into());
        d.connected = true;
        d.last_error = None;
    }
    run_link(inner.clone(), conn, hello, true, send, reader).await;
    Ok(())
}
