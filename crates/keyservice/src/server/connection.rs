//! One client connection of `serve`, under the bounds of [`ServeLimits`]: the TLS handshake
//! (timed out), then hyper's HTTP/1.1 with a request-header timeout, and an idle timeout (no
//! byte received and no request in progress). The connection's slot in the [`ConnTable`]
//! follows its phase and is released when the task ends or is aborted (evicted).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::{Extension, Router};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use super::app::Peer;
use super::conn_table::{ConnTable, OverCapLog, Phase};
use super::limits::{ServeLimits, MIN_STALL, OVER_CAP_LOG_INTERVAL};
use crate::pki;

/// The accept loop's view of the open connections: the table, each task's abort handle (to
/// evict it), and the rate-limited over-cap log.
pub(super) struct Conns {
    /// Who holds a slot.
    pub table: ConnTable,
    /// The task of each connection in the table.
    pub aborts: std::collections::HashMap<u64, AbortHandle>,
    /// Over-cap events.
    pub log: OverCapLog,
}

impl Conns {
    /// No connection yet; at most `cap`.
    pub fn new(cap: usize) -> Conns {
        Conns {
            table: ConnTable::new(cap, MIN_STALL),
            aborts: Default::default(),
            log: OverCapLog::new(OVER_CAP_LOG_INTERVAL),
        }
    }
}

/// Releases the slot when the connection's task ends, however it ends.
struct SlotGuard {
    conns: Arc<Mutex<Conns>>,
    id: u64,
}

impl SlotGuard {
    fn phase(&self, phase: Phase) {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.table.set_phase(self.id, phase, Instant::now());
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.table.remove(self.id);
        c.aborts.remove(&self.id);
    }
}

/// When the connection last received a byte or finished a reply, and how many requests are
/// in progress.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle for `idle` if nothing happens before (`None` while a
    /// request is in progress).
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle)
    }
}

/// The TLS stream, noting in [`Activity`] every read that brings bytes.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves connection `id` (already in `conns`' table) until the client closes it, a bound
/// closes it, or the accept loop aborts the task to evict it.
pub(super) async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    routes: Router,
    limits: ServeLimits,
    conns: Arc<Mutex<Conns>>,
    id: u64,
) {
    let slot = SlotGuard { conns, id };
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!("{addr}: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!("{addr}: TLS handshake timed out");
            return;
        }
    };
    slot.phase(Phase::FirstHeader);
    let fpr = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| pki::fingerprint(c));
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    // Between requests a connection without a client certificate may be evicted at the cap
    // (conn_table.rs); one with a certificate (a host) never is.
    let idle_phase = if fpr.is_some() {
        Phase::Served
    } else {
        Phase::IdleAnonymous
    };
    let inner = TowerToHyperService::new(routes.layer(Extension(Peer::new(fpr, Some(addr.ip())))));
    let slot = Arc::new(slot);
    let svc = {
        let activity = activity.clone();
        let slot = slot.clone();
        hyper::service::service_fn(move |req| {
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            slot.phase(Phase::Served);
            let reply = inner.call(req);
            let activity = activity.clone();
            let slot = slot.clone();
            async move {
                let r = reply.await;
                activity.touch();
                if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
                    slot.phase(idle_phase);
                }
                r
            }
        })
    };
    let io = Watched {
        inner: tls,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    loop {
        let wake = activity
            .idle_deadline(limits.idle_timeout)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("{addr}: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if activity.idle_deadline(limits.idle_timeout).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("{addr}: idle for {:?}, closed", limits.idle_timeout);
                    return;
                }
            }
        }
    }
}
