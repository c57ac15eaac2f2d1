//! One NBD connection: fixed-newstyle handshake, then the transmission phase.
//!
//! This file owns the session's entry points ([`run_session`], [`run_transmission`]) and
//! [`SessionOptions`]; the phases live beside it:
//! - [`negotiation`]: option haggling as a pure state object ([`negotiation::Negotiation`]);
//! - `handshake.rs`: the handshake's I/O (greeting, option loop, `STARTTLS` upgrade);
//! - `transmission.rs`: the request reader, the serving of requests and the reply writer;
//! - `reply.rs`: queued replies, their vectored write, export errors as NBD error values;
//! - `error.rs`, `stats.rs`, `stream.rs`: how a session ends, its counters, small async helpers.
//!
//! Generic over any `AsyncRead + AsyncWrite + Unpin + Send` stream, so tests can drive it over
//! `tokio::io::duplex`. Section names refer to `doc/proto.md` of NetworkBlockDevice/nbd.
//!
//! TLS ("TLS support"): with a [`TlsConfig`] other than off, `NBD_OPT_STARTTLS` is answered
//! `NBD_REP_ACK`, the TLS handshake runs over the same stream, and option haggling starts over
//! on the TLS stream with nothing negotiated before it kept (structured replies, meta
//! contexts); the transmission phase then runs over TLS too. In
//! [`TlsMode::Require`](crate::TlsMode::Require) (FORCEDTLS) every option before the upgrade
//! except `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`, and `EXPORT_NAME` closes the
//! connection.
//!
//! Transmission ("Transmission", "Ordering of messages and writes"): a reader parses requests
//! (bounded by [`MAX_IN_FLIGHT`] requests and [`MAX_BUFFERED_BYTES`] of buffers, and by the
//! server-wide [`SessionOptions::budget`]: without room it stops reading requests). READs and
//! WRITEs of at most [`BlockExport::inline_limit`] bytes (or
//! [`SessionOptions::inline_limit`]) it serves itself, on its runtime thread (no thread
//! hand-off); larger READs and WRITEs go straight to a blocking-pool thread, which queues the
//! reply; every other request gets a task of its own, which runs any export call on the
//! blocking pool. A panic in the export during a READ or WRITE is an `EIO` reply for that
//! request. Replies are queued; a writer sends them in completion order (a large READ reply's
//! header and data in one vectored write). Data buffers come from, and go back to, the
//! server-wide [`BufferPool`](crate::buffers::BufferPool) (no zero-filling per request).
//!
//! Reply style ("Simple reply message", "Structured reply chunk message"): without
//! `NBD_OPT_STRUCTURED_REPLY` (the kernel client) every reply is simple. Once it is
//! negotiated every reply is structured: a READ is one `OFFSET_DATA` chunk with `DONE` (so
//! `NBD_CMD_FLAG_DF` is always honoured, up to the 32 MiB maximum), a BLOCK_STATUS one
//! `BLOCK_STATUS` chunk with `DONE`, any other success a `NONE` chunk, and every error an
//! `ERROR` chunk with `DONE` and a message. A reply holds its permits until it has been
//! written, so a client that stops reading replies stalls its own reader instead of growing
//! memory.
//!
//! Exports ("Option types"): the client names one of the server's [`Exports`] (`""` = the
//! default, the first); the session serves that one. What the session negotiated and moved is
//! counted in [`SessionStats`] for the server's per-connection log line.

mod error;
mod handshake;
pub mod negotiation;
mod reply;
mod stats;
mod stream;
mod transmission;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::debug;

pub use error::{SessionEnd, SessionError};
pub use stats::SessionStats;
pub use transmission::{MAX_BUFFERED_BYTES, MAX_IN_FLIGHT};

use handshake::{negotiate, Gate, Handshake, Upgrade};
use stream::wait_shutdown;
use transmission::{transmission, Limits};

use crate::admission::HandshakeTicket;
use crate::budget::MemoryBudget;
use crate::export::{BlockExport, Exports};
use crate::proto::Negotiated;
use crate::tls::TlsConfig;

/// Per-connection settings of [`run_session`].
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// What `NBD_OPT_STARTTLS` does ([`TlsConfig::off`], the default: `ERR_UNSUP`).
    pub tls: TlsConfig,
    /// The handshake (greeting, option haggling, any TLS handshake) must reach the
    /// transmission phase within this time, or the connection is closed
    /// ([`SessionError::HandshakeTimeout`]), so clients that connect and stall cannot hold
    /// connection slots (qemu-nbd's `--handshake-limit`, 10 s by default, for CVE-2024-7409).
    /// `None`: no limit.
    pub handshake_limit: Option<std::time::Duration>,
    /// READs and WRITEs of at most this many bytes are served inline on the connection's
    /// reader (see [`BlockExport::inline_limit`]), overriding every export's own limit;
    /// `Some(0)`: none inline, every request on the blocking pool (for images on slow disks,
    /// where an inline request would hold up the connection's next requests for the disk's
    /// latency). `None` (the default): each export's [`BlockExport::inline_limit`].
    pub inline_limit: Option<u32>,
    /// In the transmission phase, close a connection that has sent no request for this long
    /// while none of its requests was in flight ([`SessionEnd::Idle`]). `None` (the default,
    /// as qemu-nbd): never.
    pub idle_limit: Option<std::time::Duration>,
    /// The server-wide budget of READ/WRITE buffer bytes ([`crate::budget`]): a request that
    /// fits neither the connection's floor nor the shared pool waits, and the connection's
    /// reader with it. `None` (the default): only the per-connection limits
    /// ([`MAX_BUFFERED_BYTES`], [`MAX_IN_FLIGHT`]).
    pub budget: Option<MemoryBudget>,
}

impl SessionOptions {
    fn limits(&self) -> Limits {
        Limits {
            inline_limit: self.inline_limit,
            idle_limit: self.idle_limit,
            budget: self.budget.clone(),
        }
    }
}

/// Serve one connection until the client disconnects, the protocol is violated or `shutdown`
/// becomes `true` (a dropped sender means "never"). The client picks one of `exports` by name
/// in the handshake; `stats` records what the session negotiated and moved. `tls` decides what
/// `NBD_OPT_STARTTLS` does (see the module documentation); after an upgrade everything else
/// runs over TLS.
///
/// On the way out of the transmission phase (DISC, EOF, error or shutdown) the session stops
/// reading, lets in-flight requests finish and their replies go out, flushes the export, then
/// shuts the stream down (sending TLS `close_notify` first over TLS). Errors:
/// [`SessionError`] (a failed TLS handshake is [`SessionError::TlsHandshake`]); none of them
/// affects other connections.
pub async fn run_session<S>(
    stream: S,
    exports: Arc<Exports>,
    stats: Arc<SessionStats>,
    opts: SessionOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    run_admitted(stream, exports, stats, opts, shutdown, None).await
}

/// [`run_session`] for a connection holding a handshake slot (`ticket`, from the server's
/// [`Admission`](crate::admission::Admission)): the handshake ends
/// ([`SessionEnd::Evicted`]) if a newcomer evicts it, and when GO or EXPORT_NAME chooses an
/// export the connection trades the slot for an established one, or is refused (GO gets
/// `NBD_REP_ERR_POLICY`) and closes ([`SessionEnd::Refused`]).
pub(crate) async fn run_admitted<S>(
    stream: S,
    exports: Arc<Exports>,
    stats: Arc<SessionStats>,
    opts: SessionOptions,
    mut shutdown: watch::Receiver<bool>,
    ticket: Option<HandshakeTicket>,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let eviction = ticket.as_ref().map(HandshakeTicket::eviction);
    let evicted = async {
        match &eviction {
            Some(e) => e.wait().await,
            None => std::future::pending().await,
        }
    };
    // The gate trades the handshake slot for an established one before GO is answered.
    let mut gate = Gate::new(ticket);
    let handshake = async {
        let n = negotiate(stream, &exports, &opts.tls, &mut gate);
        match opts.handshake_limit {
            Some(limit) => tokio::time::timeout(limit, n)
                .await
                .map_err(|_| SessionError::HandshakeTimeout(limit))?,
            None => n.await,
        }
    };
    let negotiated = tokio::select! {
        r = handshake => r?,
        _ = wait_shutdown(&mut shutdown) => {
            debug!("shutdown during handshake");
            return Ok(SessionEnd::Shutdown);
        }
        _ = evicted => {
            debug!("evicted during the handshake");
            return Ok(SessionEnd::Evicted);
        }
    };
    // Held until the session ends (none unless the handshake reached transmission).
    let _slot = gate.into_slot();
    let limits = opts.limits();
    match negotiated {
        Upgrade::Plain(s, outcome) => finish(s, outcome, &exports, stats, shutdown, limits).await,
        Upgrade::Tls(s, outcome) => {
            stats.tls.store(true, Ordering::Relaxed);
            finish(s, outcome, &exports, stats, shutdown, limits).await
        }
    }
}

/// Serve `export` from the transmission phase on, without a handshake: for a client that was
/// told the size and transmission flags out of band (the Linux kernel, [`super::kernel`]), so
/// replies are simple (nothing negotiated: no structured replies, no meta context). The flags
/// the client was given should be `proto::transmission_flags(read_only, false)`. Ends, errors
/// and the final flush as [`run_session`]; `stats.export` is set to `name`. `inline_limit`
/// as [`SessionOptions::inline_limit`] (`None`: the export's own).
pub async fn run_transmission<S>(
    stream: S,
    name: &str,
    export: Arc<dyn BlockExport>,
    read_only: bool,
    stats: Arc<SessionStats>,
    shutdown: watch::Receiver<bool>,
    inline_limit: Option<u32>,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _ = stats.export.set(name.to_string());
    let neg = Negotiated::default();
    let limits = Limits {
        inline_limit,
        ..Limits::default()
    };
    transmission(stream, export, read_only, neg, stats, shutdown, limits).await
}

/// After the handshake: ABORT, hang-up, or the transmission phase on the chosen export.
async fn finish<S>(
    mut stream: S,
    outcome: Handshake,
    exports: &Exports,
    stats: Arc<SessionStats>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match outcome {
        Handshake::Aborted => {
            let _ = stream.shutdown().await;
            Ok(SessionEnd::Aborted)
        }
        // `negotiate` turns StartTls into the upgrade, so it never gets here.
        Handshake::HungUp | Handshake::StartTls => Ok(SessionEnd::ClientClosed),
        Handshake::Refused => {
            let _ = stream.shutdown().await;
            Ok(SessionEnd::Refused)
        }
        Handshake::Transmission(neg, index) => {
            let e = exports.get(index);
            let _ = stats.export.set(e.config.name.clone());
            stats.structured.store(neg.structured, Ordering::Relaxed);
            stats
                .meta_context
                .store(neg.base_allocation, Ordering::Relaxed);
            let (export, read_only) = (e.export.clone(), e.config.read_only);
            transmission(stream, export, read_only, neg, stats, shutdown, limits).await
        }
    }
}
