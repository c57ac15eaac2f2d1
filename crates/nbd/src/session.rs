//! One NBD connection: fixed-newstyle handshake, then the transmission phase.
//!
//! Generic over any `AsyncRead + AsyncWrite + Unpin + Send` stream, so tests can drive it over
//! `tokio::io::duplex`. Section names refer to `doc/proto.md` of NetworkBlockDevice/nbd.
//!
//! TLS ("TLS support"): with a [`TlsConfig`] other than off, `NBD_OPT_STARTTLS` is answered
//! `NBD_REP_ACK`, the TLS handshake runs over the same stream, and option haggling starts over
//! on the TLS stream with nothing negotiated before it kept (structured replies, meta
//! contexts); the transmission phase then runs over TLS too. In [`TlsMode::Require`]
//! (FORCEDTLS) every option before the upgrade except `STARTTLS` and `ABORT` gets
//! `NBD_REP_ERR_TLS_REQD`, and `EXPORT_NAME` closes the connection.
//!
//! Transmission ("Transmission", "Ordering of messages and writes"): a reader parses requests
//! (bounded by [`MAX_IN_FLIGHT`] requests and [`MAX_BUFFERED_BYTES`] of buffers). READs and
//! WRITEs of at most [`BlockExport::inline_limit`] bytes (or [`SessionOptions::inline_limit`]) it serves itself, on its runtime
//! thread (no thread hand-off); larger READs and WRITEs go straight to a blocking-pool thread,
//! which queues the reply; every other request gets a task of its own, which runs any export
//! call on the blocking pool. A panic in the export during a READ or
//! WRITE is an `EIO` reply for that request. Replies are queued; a writer sends them in
//! completion order (a large READ reply's header and data in one vectored write). Data buffers
//! come from, and go back to, the server-wide [`BufferPool`] (no zero-filling per request).
//!
//! Reply style ("Simple reply message", "Structured reply chunk message"): without
//! `NBD_OPT_STRUCTURED_REPLY` (the kernel client) every reply is simple. Once it is
//! negotiated every reply is structured: a READ is one `OFFSET_DATA` chunk with `DONE` (so
//! `NBD_CMD_FLAG_DF` is always honoured, up to the 32 MiB maximum), a BLOCK_STATUS one
//! `BLOCK_STATUS` chunk with `DONE`, any other success a `NONE` chunk, and every error an
//! `ERROR` chunk with `DONE` and a message. A reply holds its
//! permits until it has been written, so a client that stops reading replies stalls its own
//! reader instead of growing memory.
//!
//! Exports ("Option types"): the client names one of the server's [`Exports`] (`""` = the
//! default, the first); the session serves that one. What the session negotiated and moved is
//! counted in [`SessionStats`] for the server's per-connection log line.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use thiserror::Error;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn, Instrument};

use super::buffers::BufferPool;
use super::proto::{self, Command, Negotiated, Request, Verdict};
use super::tls::{TlsConfig, TlsMode};
use super::{BlockExport, Exports};

/// Most requests handled concurrently on one connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most bytes of READ/WRITE buffers held by one connection (requests plus unsent replies).
pub const MAX_BUFFERED_BYTES: usize = 256 << 20;
/// Unit of the byte budget semaphore.
const BUDGET_UNIT: usize = 1024;

/// How a session ended without a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent `NBD_OPT_ABORT` (proto.md "Termination of the session during option
    /// haggling").
    Aborted,
    /// The client sent `NBD_CMD_DISC`; in-flight requests were finished and the export flushed.
    Disconnected,
    /// The client closed the connection between messages.
    ClientClosed,
    /// The server is shutting down; in-flight requests were finished and the export flushed.
    Shutdown,
}

/// Why a session ended abnormally. Only this connection is affected.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Socket error, including the client hanging up in the middle of a message.
    #[error("connection I/O: {0}")]
    Io(#[from] io::Error),
    /// Client flags with bits this server does not know (MUST close; proto.md "Newstyle
    /// negotiation").
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// A malformed message that desynchronises the stream (bad option or request magic).
    #[error("protocol violation: {0}")]
    Protocol(#[from] proto::ProtoError),
    /// `NBD_OPT_EXPORT_NAME` for an export that does not exist (MUST terminate the session).
    #[error("EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    /// An option whose declared data length is too large even to discard.
    #[error("option {opt} declares {len} bytes of data")]
    OptionTooLarge {
        /// The option number.
        opt: u32,
        /// Declared data length in bytes.
        len: u32,
    },
    /// A non-fixed-newstyle client sent an option other than `EXPORT_NAME`.
    #[error("option {0} from a client without fixed newstyle")]
    NotFixedNewstyle(u32),
    /// A WRITE whose declared payload is too large even to discard.
    #[error("WRITE declares a {0}-byte payload")]
    WriteTooLarge(u32),
    /// `NBD_OPT_EXPORT_NAME` before `STARTTLS` on a server that requires TLS (cannot be
    /// answered with an error: MUST terminate; proto.md "FORCEDTLS mode").
    #[error("EXPORT_NAME without TLS on a server that requires TLS")]
    TlsRequired,
    /// The TLS handshake after `STARTTLS` failed (no or untrusted client certificate, a client
    /// speaking plain text, garbage, ...); too late to continue without TLS, so the session
    /// ends (proto.md "FORCEDTLS mode").
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] io::Error),
    /// The handshake took longer than [`SessionOptions::handshake_limit`].
    #[error("handshake not finished within {} s", .0.as_secs_f64())]
    HandshakeTimeout(std::time::Duration),
}

/// What one session negotiated and moved, for the per-connection log line. Filled in while
/// the session runs (request tasks update the counters concurrently); read it after
/// [`run_session`] returns.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Name of the export the client selected (the configured name, also when it asked for
    /// `""`); unset if the session never reached the transmission phase.
    pub export: OnceLock<String>,
    /// Structured replies were negotiated (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured: AtomicBool,
    /// `base:allocation` was selected for the export in use (`NBD_OPT_SET_META_CONTEXT`).
    pub meta_context: AtomicBool,
    /// The connection runs over TLS (set once the `STARTTLS` upgrade is done).
    pub tls: AtomicBool,
    /// Requests received in the transmission phase (every command, DISC and refused ones
    /// included).
    pub requests: AtomicU64,
    /// Bytes of READ data sent for successful READs.
    pub bytes_read: AtomicU64,
    /// Bytes of WRITE payload that were written successfully.
    pub bytes_written: AtomicU64,
}

impl SessionStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

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
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let handshake = async {
        let n = negotiate(stream, &exports, &opts.tls);
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
    };
    match negotiated {
        Upgrade::Plain(s, outcome) => {
            finish(s, outcome, &exports, stats, shutdown, opts.inline_limit).await
        }
        Upgrade::Tls(s, outcome) => {
            stats.tls.store(true, Ordering::Relaxed);
            finish(s, outcome, &exports, stats, shutdown, opts.inline_limit).await
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
    transmission(
        stream,
        export,
        read_only,
        neg,
        stats,
        shutdown,
        inline_limit,
    )
    .await
}

/// After the handshake: ABORT, hang-up, or the transmission phase on the chosen export.
async fn finish<S>(
    mut stream: S,
    outcome: Handshake,
    exports: &Exports,
    stats: Arc<SessionStats>,
    shutdown: watch::Receiver<bool>,
    inline_limit: Option<u32>,
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
        Handshake::Transmission(neg, index) => {
            let e = exports.get(index);
            let _ = stats.export.set(e.config.name.clone());
            stats.structured.store(neg.structured, Ordering::Relaxed);
            stats
                .meta_context
                .store(neg.base_allocation, Ordering::Relaxed);
            let (export, read_only) = (e.export.clone(), e.config.read_only);
            transmission(
                stream,
                export,
                read_only,
                neg,
                stats,
                shutdown,
                inline_limit,
            )
            .await
        }
    }
}

/// The stream the handshake ended on, and how it ended.
enum Upgrade<S> {
    Plain(S, Handshake),
    Tls(Box<tokio_rustls::server::TlsStream<S>>, Handshake),
}

/// Greeting, client flags, option haggling; after `STARTTLS` the TLS handshake and a second
/// round of option haggling over TLS, with a fresh [`Negotiated`] (proto.md
/// "NBD_OPT_STARTTLS": no negotiation state is preserved).
async fn negotiate<S>(
    mut s: S,
    exports: &Exports,
    tls: &TlsConfig,
) -> Result<Upgrade<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(client) = greet(&mut s).await? else {
        return Ok(Upgrade::Plain(s, Handshake::HungUp));
    };
    let outcome = options(&mut s, client, exports, tls, false).await?;
    let Handshake::StartTls = outcome else {
        return Ok(Upgrade::Plain(s, outcome));
    };
    let acceptor = tls
        .acceptor()
        .expect("STARTTLS is only acknowledged with an acceptor");
    let mut t = acceptor
        .accept(s)
        .await
        .map_err(SessionError::TlsHandshake)?;
    debug!(version = ?t.get_ref().1.protocol_version(), "TLS established");
    let outcome = options(&mut t, client, exports, tls, true).await?;
    Ok(Upgrade::Tls(Box::new(t), outcome))
}

/// Resolves once the shutdown flag is true; never if the sender is gone.
async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

enum Handshake {
    /// GO or EXPORT_NAME succeeded for the export at this index of [`Exports`].
    Transmission(Negotiated, usize),
    Aborted,
    HungUp,
    /// `STARTTLS` was acknowledged; the TLS handshake comes next.
    StartTls,
}

/// What the client flags asked for (proto.md "Client flags"); kept across `STARTTLS`.
#[derive(Clone, Copy)]
struct ClientFlags {
    fixed: bool,
    no_zeroes: bool,
}

async fn send_opt_reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    rtype: u32,
    data: &[u8],
) -> io::Result<()> {
    s.write_all(&proto::encode_option_reply(opt, rtype, data))
        .await
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> io::Result<()> {
    let n = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if n < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Greeting and client flags (proto.md "Newstyle negotiation"); `None` if the client hung up
/// (before the greeting could be sent, or before sending its flags).
async fn greet<S>(s: &mut S) -> Result<Option<ClientFlags>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let greeted = async {
        s.write_all(&proto::encode_greeting()).await?;
        s.flush().await
    };
    match greeted.await {
        Ok(()) => {}
        // A client (or a readiness probe) that hangs up before the greeting is sent.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    }
    let mut cf = [0u8; 4];
    match s.read_exact(&mut cf).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let cflags = proto::parse_client_flags(cf).map_err(SessionError::UnknownClientFlags)?;
    Ok(Some(ClientFlags {
        fixed: cflags & proto::CLIENT_FIXED_NEWSTYLE != 0,
        no_zeroes: cflags & proto::CLIENT_NO_ZEROES != 0,
    }))
}

/// Fixed-newstyle option haggling (proto.md "Fixed newstyle negotiation", "Option types",
/// "TLS support"), in plain text (`tls_active` false) or over TLS after `STARTTLS`. Every
/// round starts with nothing negotiated.
async fn options<S>(
    s: &mut S,
    client: ClientFlags,
    exports: &Exports,
    tls: &TlsConfig,
    tls_active: bool,
) -> Result<Handshake, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ClientFlags { fixed, no_zeroes } = client;
    let mut neg = Negotiated::default();
    // The export the last successful SET_META_CONTEXT named: a selection only holds for the
    // export finally chosen (proto.md NBD_OPT_SET_META_CONTEXT); nbdkit discards it likewise.
    let mut meta_export: Option<usize> = None;
    // FORCEDTLS before the upgrade: only STARTTLS and ABORT get anything but ERR_TLS_REQD.
    let forced = tls.mode() == TlsMode::Require && !tls_active;
    let tls_exempt = |opt: u32| opt == proto::OPT_STARTTLS || opt == proto::OPT_ABORT;

    loop {
        s.flush().await?;
        let mut hb = [0u8; proto::OPTION_HEADER_LEN];
        match s.read_exact(&mut hb).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Handshake::HungUp),
            Err(e) => return Err(e.into()),
        }
        let hdr = proto::parse_option_header(&hb)?;
        let opt = hdr.opt;
        if !fixed && opt != proto::OPT_EXPORT_NAME {
            return Err(SessionError::NotFixedNewstyle(opt));
        }
        if hdr.len > proto::MAX_OPTION_DATA {
            if hdr.len > proto::MAX_OPTION_DISCARD || opt == proto::OPT_EXPORT_NAME {
                return Err(SessionError::OptionTooLarge { opt, len: hdr.len });
            }
            warn!(opt, len = hdr.len, "oversize option data discarded");
            discard(s, u64::from(hdr.len)).await?;
            if forced && !tls_exempt(opt) {
                send_opt_reply(s, opt, proto::REP_ERR_TLS_REQD, TLS_REQD_MSG).await?;
            } else {
                send_opt_reply(s, opt, proto::REP_ERR_TOO_BIG, b"option data too large").await?;
            }
            continue;
        }
        let mut data = vec![0u8; hdr.len as usize];
        s.read_exact(&mut data).await?;
        debug!(opt, len = hdr.len, tls = tls_active, "option");

        if forced && !tls_exempt(opt) {
            if opt == proto::OPT_EXPORT_NAME {
                // Cannot return an error: MUST terminate the session.
                warn!("EXPORT_NAME without TLS; TLS is required");
                return Err(SessionError::TlsRequired);
            }
            debug!(opt, "TLS required");
            send_opt_reply(s, opt, proto::REP_ERR_TLS_REQD, TLS_REQD_MSG).await?;
            continue;
        }

        match opt {
            proto::OPT_EXPORT_NAME => {
                let found = (data.len() <= proto::MAX_STRING)
                    .then(|| exports.find(&data))
                    .flatten();
                let Some((index, e)) = found else {
                    // Cannot return an error: MUST terminate the session.
                    warn!("EXPORT_NAME for an unknown export");
                    return Err(SessionError::UnknownExport(
                        String::from_utf8_lossy(&data[..data.len().min(256)]).into_owned(),
                    ));
                };
                if meta_export != Some(index) {
                    neg.base_allocation = false;
                }
                let tflags = proto::transmission_flags(e.config.read_only, neg.structured);
                let size = e.export.size();
                s.write_all(&proto::encode_export_name_reply(size, tflags, no_zeroes))
                    .await?;
                s.flush().await?;
                return Ok(Handshake::Transmission(neg, index));
            }
            proto::OPT_ABORT => {
                // The client SHOULD wait for the ACK but many (nbdinfo --list) hang up at once;
                // a failed send still ends the session as the abort it was.
                let sent = async {
                    send_opt_reply(s, opt, proto::REP_ACK, &[]).await?;
                    s.flush().await
                };
                if let Err(e) = sent.await {
                    debug!(error = %e, "ACK of ABORT not delivered");
                }
                return Ok(Handshake::Aborted);
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    send_opt_reply(s, opt, proto::REP_ERR_INVALID, b"LIST takes no data").await?;
                    continue;
                }
                for e in exports.iter() {
                    let c = &e.config;
                    let server = proto::encode_rep_server(&c.name, c.description.as_deref());
                    send_opt_reply(s, opt, proto::REP_SERVER, &server).await?;
                }
                send_opt_reply(s, opt, proto::REP_ACK, &[]).await?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                if let Some(index) = info_or_go(s, opt, &data, &neg, exports).await? {
                    if meta_export != Some(index) {
                        neg.base_allocation = false;
                    }
                    s.flush().await?;
                    return Ok(Handshake::Transmission(neg, index));
                }
            }
            proto::OPT_STRUCTURED_REPLY => {
                // proto.md "Option types", NBD_OPT_STRUCTURED_REPLY: no data allowed
                // (ERR_INVALID); a repeat MAY be ERR_INVALID.
                if !data.is_empty() {
                    send_opt_reply(s, opt, proto::REP_ERR_INVALID, b"option takes no data").await?;
                } else if neg.structured {
                    send_opt_reply(
                        s,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"structured replies already negotiated",
                    )
                    .await?;
                } else {
                    neg.structured = true;
                    send_opt_reply(s, opt, proto::REP_ACK, &[]).await?;
                }
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                if let Some(index) = meta_context(s, opt, &data, &mut neg, exports).await? {
                    meta_export = Some(index);
                }
            }
            proto::OPT_STARTTLS => {
                // proto.md "NBD_OPT_STARTTLS", "NOTLS mode", "FORCEDTLS mode".
                let (rep, msg): (u32, &[u8]) = if tls.acceptor().is_none() {
                    // NOTLS: as any option this server does not support
                    (proto::REP_ERR_UNSUP, b"option not supported")
                } else if tls_active {
                    (proto::REP_ERR_INVALID, b"TLS is already negotiated")
                } else if !data.is_empty() {
                    (proto::REP_ERR_INVALID, b"STARTTLS takes no data")
                } else {
                    send_opt_reply(s, opt, proto::REP_ACK, &[]).await?;
                    s.flush().await?;
                    return Ok(Handshake::StartTls);
                };
                debug!(opt, rep, "STARTTLS refused");
                send_opt_reply(s, opt, rep, msg).await?;
            }
            _ => {
                debug!(opt, "unsupported option");
                send_opt_reply(s, opt, proto::REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
    }
}

/// Message of `NBD_REP_ERR_TLS_REQD` replies.
const TLS_REQD_MSG: &[u8] = b"TLS is required: send NBD_OPT_STARTTLS first";

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT` (proto.md "Option types",
/// "Metadata querying"). SET replaces the selection even when it fails, and before structured
/// replies it is `ERR_INVALID`; LIST is answered at any time. Malformed data or a query
/// without a namespace → `ERR_INVALID`; a name that selects none of `exports` →
/// `ERR_UNKNOWN`. The only context, on every export, is `base:allocation` (id
/// [`proto::BASE_ALLOCATION_ID`] on SET, 0 on LIST); unknown namespaces and leaves are ignored.
/// Returns the index of the export when SET selected `base:allocation` for it.
async fn meta_context<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    data: &[u8],
    neg: &mut Negotiated,
    exports: &Exports,
) -> io::Result<Option<usize>> {
    let set = opt == proto::OPT_SET_META_CONTEXT;
    if set {
        neg.base_allocation = false;
        if !neg.structured {
            send_opt_reply(
                s,
                opt,
                proto::REP_ERR_INVALID,
                b"SET_META_CONTEXT needs structured replies first",
            )
            .await?;
            return Ok(None);
        }
    }
    let req = match proto::parse_meta_context_request(data) {
        Ok(r) => r,
        Err(e) => {
            debug!(opt, error = %e, "malformed meta context option");
            send_opt_reply(s, opt, proto::REP_ERR_INVALID, e.to_string().as_bytes()).await?;
            return Ok(None);
        }
    };
    let Some((index, _)) = exports.find(&req.name) else {
        send_opt_reply(s, opt, proto::REP_ERR_UNKNOWN, b"no such export").await?;
        return Ok(None);
    };
    let mut selected = None;
    if proto::selects_base_allocation(&req.queries, !set) {
        let id = if set { proto::BASE_ALLOCATION_ID } else { 0 };
        let rep = proto::encode_rep_meta_context(id, proto::BASE_ALLOCATION);
        send_opt_reply(s, opt, proto::REP_META_CONTEXT, &rep).await?;
        if set {
            neg.base_allocation = true;
            selected = Some(index);
        }
    }
    send_opt_reply(s, opt, proto::REP_ACK, &[]).await?;
    Ok(selected)
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO` share this path, so both report the same information
/// (proto.md "Option types"); a name that selects none of `exports` → `ERR_UNKNOWN`. Returns
/// the export's index when GO succeeded (transmission starts).
async fn info_or_go<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    data: &[u8],
    neg: &Negotiated,
    exports: &Exports,
) -> io::Result<Option<usize>> {
    let req = match proto::parse_info_request(data) {
        Ok(r) => r,
        Err(e) => {
            warn!(opt, error = %e, "malformed INFO/GO");
            send_opt_reply(s, opt, proto::REP_ERR_INVALID, e.to_string().as_bytes()).await?;
            return Ok(None);
        }
    };
    let Some((index, e)) = exports.find(&req.name) else {
        send_opt_reply(s, opt, proto::REP_ERR_UNKNOWN, b"no such export").await?;
        return Ok(None);
    };
    let (export, config) = (&*e.export, &e.config);
    let size = export.size();
    // Flags depend on what was negotiated so far (SEND_DF needs structured replies); INFO and
    // GO see the same state, so they report the same flags.
    let tflags = proto::transmission_flags(config.read_only, neg.structured);
    send_opt_reply(
        s,
        opt,
        proto::REP_INFO,
        &proto::encode_info_export(size, tflags),
    )
    .await?;
    let mut sent: Vec<u16> = Vec::new();
    for &t in &req.requests {
        if sent.contains(&t) {
            continue;
        }
        sent.push(t);
        let info = match t {
            proto::INFO_BLOCK_SIZE => {
                let min = export.min_block_size();
                Some(proto::encode_info_block_size(
                    min,
                    proto::PREFERRED_BLOCK.max(min),
                    proto::MAX_PAYLOAD,
                ))
            }
            proto::INFO_NAME => Some(proto::encode_info_string(t, &config.name)),
            proto::INFO_DESCRIPTION => config
                .description
                .as_deref()
                .map(|d| proto::encode_info_string(t, d)),
            _ => None, // unknown information types MUST be ignored
        };
        if let Some(info) = info {
            send_opt_reply(s, opt, proto::REP_INFO, &info).await?;
        }
    }
    send_opt_reply(s, opt, proto::REP_ACK, &[]).await?;
    Ok((opt == proto::OPT_GO).then_some(index))
}

/// A queued reply (simple, or the chunks of a structured reply); holds its request's permits
/// until written.
struct Reply {
    /// Simple reply header, or the chunk header(s) before `data`.
    head: Vec<u8>,
    /// READ data, sent after `head`.
    data: Vec<u8>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Reply {
    fn new(head: Vec<u8>, data: Vec<u8>) -> Reply {
        Reply {
            head,
            data,
            _permits: None,
        }
    }

    /// An error reply: simple, or an `NBD_REPLY_TYPE_ERROR` chunk with `DONE` and a message.
    fn error(structured: bool, err: u32, cookie: u64) -> Reply {
        let head = if structured {
            proto::encode_error_chunk(err, cookie, proto::error_message(err))
        } else {
            proto::encode_simple_reply(err, cookie).to_vec()
        };
        Reply::new(head, Vec::new())
    }

    /// Success without data: simple, or a `NBD_REPLY_TYPE_NONE` chunk with `DONE`.
    fn ok(structured: bool, cookie: u64) -> Reply {
        let head = if structured {
            proto::encode_none_chunk(cookie).to_vec()
        } else {
            proto::encode_simple_reply(0, cookie).to_vec()
        };
        Reply::new(head, Vec::new())
    }

    /// Success or error without data.
    fn status(structured: bool, err: u32, cookie: u64) -> Reply {
        if err == 0 {
            Reply::ok(structured, cookie)
        } else {
            Reply::error(structured, err, cookie)
        }
    }
}

/// Map an export I/O result to an NBD error value: a full disk or quota (`ENOSPC`, `EDQUOT`)
/// is `ENOSPC`, any other failure `EIO` (only the values of proto.md "Error values" may go on
/// the wire).
fn errno_of<T>(r: &Result<io::Result<T>, tokio::task::JoinError>) -> u32 {
    match r {
        Ok(Ok(_)) => 0,
        Ok(Err(e)) => {
            warn!(error = %e, "export I/O error");
            match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => proto::ENOSPC,
                _ => proto::EIO,
            }
        }
        Err(e) => {
            warn!(error = %e, "export call panicked");
            proto::EIO
        }
    }
}

/// [`errno_of`] for the `*_unless` writes: a write skipped because the connection was
/// abandoned is `EIO` (the reply goes nowhere).
fn errno_of_write(r: &Result<io::Result<bool>, tokio::task::JoinError>) -> u32 {
    match r {
        Ok(Ok(false)) => proto::EIO,
        other => errno_of(other),
    }
}

/// Serve a READ of `req.length` > 0 bytes now, on this thread: the reply with the data (from
/// the [`BufferPool`], returned to it once sent), or an `EIO` error reply.
fn serve_read(
    export: &dyn BlockExport,
    req: &Request,
    neg: &Negotiated,
    stats: &SessionStats,
) -> Reply {
    let (cookie, off, len, sr) = (req.cookie, req.offset, req.length, neg.structured);
    // Holes are looked up only where a structured reply may fragment (no DF), and only when
    // the export can have any (discard passdown).
    let fragments = sr && req.flags & proto::CMD_FLAG_DF == 0 && export.reports_holes();
    let pool = BufferPool::global();
    let mut buf = pool.take(len as usize);
    let r = export.read_at(&mut buf, off).and_then(|()| {
        Ok(if fragments {
            let extents = export.block_status(off, len)?;
            proto::encode_read_chunks(cookie, off, &buf, &extents)
        } else {
            None
        })
    });
    match r {
        // The whole read is done before anything is sent, so the last chunk can carry DONE.
        // With holes (discard passdown, no DF): OFFSET_HOLE and OFFSET_DATA chunks; otherwise
        // one OFFSET_DATA chunk (so DF is honoured for any length up to MAX_PAYLOAD).
        Ok(chunks) => {
            SessionStats::add(&stats.bytes_read, u64::from(len));
            match chunks {
                Some(chunks) => {
                    pool.give(buf);
                    Reply::new(chunks, Vec::new())
                }
                None if sr => Reply::new(
                    proto::encode_offset_data_header(cookie, off, len, true),
                    buf,
                ),
                None => Reply::new(proto::encode_simple_reply(0, cookie).to_vec(), buf),
            }
        }
        Err(e) => {
            pool.give(buf);
            Reply::error(sr, errno_of::<()>(&Ok(Err(e))), cookie)
        }
    }
}

/// Serve a WRITE of `payload` (`req.length` > 0 bytes, from the [`BufferPool`], returned to
/// it here) now, on this thread. Skipped once `abandoned` is set
/// ([`BlockExport::write_at_unless`]).
fn serve_write(
    export: &dyn BlockExport,
    req: &Request,
    mut payload: Vec<u8>,
    neg: &Negotiated,
    stats: &SessionStats,
    abandoned: &AtomicBool,
) -> Reply {
    let r = export.write_at_unless(&mut payload, req.offset, req.fua(), abandoned);
    BufferPool::global().give(payload);
    let err = errno_of_write(&Ok(r));
    if err == 0 {
        SessionStats::add(&stats.bytes_written, u64::from(req.length));
    }
    Reply::status(neg.structured, err, req.cookie)
}

/// Whether `req` (validated, to be served) is a READ or WRITE of at least one byte, served by
/// [`serve_data`]: inline up to [`BlockExport::inline_limit`] bytes, on the blocking pool
/// beyond.
fn moves_data(req: &Request) -> bool {
    matches!(req.command, Command::Read | Command::Write) && req.length > 0
}

/// Serve a READ or WRITE of `req.length` > 0 bytes (`payload`: a WRITE's data) now, on this
/// thread: the reader's up to the inline limit, a blocking-pool thread for a larger one.
/// A panic in the export is logged and becomes an `EIO` reply for this request; the
/// connection goes on (the volume's stripe locks ignore poisoning and the buffer pool holds
/// no lock across the call, so unwinding through them leaves nothing inconsistent).
fn serve_data(
    export: &dyn BlockExport,
    req: &Request,
    payload: Vec<u8>,
    neg: &Negotiated,
    stats: &SessionStats,
    abandoned: &AtomicBool,
) -> Reply {
    let serve = || match req.command {
        Command::Read => serve_read(export, req, neg, stats),
        _ => serve_write(export, req, payload, neg, stats, abandoned),
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        warn!(panic = msg, command = ?req.command, offset = req.offset, "export call panicked");
        Reply::error(neg.structured, proto::EIO, req.cookie)
    })
}

/// Run one validated request other than a nonempty READ or WRITE against the export and
/// build its reply.
///
/// WRITE_ZEROES and TRIM are skipped once `abandoned` is set (see
/// [`BlockExport::write_at_unless`]); their reply, EIO, is never sent, since the client is
/// gone.
async fn handle(
    export: Arc<dyn BlockExport>,
    req: Request,
    neg: Negotiated,
    abandoned: Arc<AtomicBool>,
) -> Reply {
    let cookie = req.cookie;
    let len = req.length as usize;
    let sr = neg.structured;
    match req.command {
        // Only empty ones come here; the others go to serve_data.
        Command::Read | Command::Write => Reply::ok(sr, cookie),
        Command::WriteZeroes if len == 0 => Reply::ok(sr, cookie),
        Command::WriteZeroes => {
            let (off, fua) = (req.offset, req.fua());
            let r = tokio::task::spawn_blocking(move || {
                export.write_zeroes_unless(off, len as u64, fua, &abandoned)
            })
            .await;
            Reply::status(sr, errno_of_write(&r), cookie)
        }
        Command::Flush => {
            let r = tokio::task::spawn_blocking(move || export.flush()).await;
            Reply::status(sr, errno_of(&r), cookie)
        }
        // A hint (proto.md NBD_CMD_TRIM): the export's discard policy decides what it does.
        Command::Trim if len == 0 => Reply::ok(sr, cookie),
        Command::Trim => {
            let (off, fua) = (req.offset, req.fua());
            let r =
                tokio::task::spawn_blocking(move || export.trim(off, len as u64, fua, &abandoned))
                    .await;
            Reply::status(sr, errno_of(&r), cookie)
        }
        // Advisory prefetch (proto.md NBD_CMD_CACHE); the range was bounds-checked.
        Command::Cache => Reply::ok(sr, cookie),
        // Only reached with structured replies and base:allocation selected (check_request).
        // The export says what it knows (a volume with discard "ignore": everything is data).
        Command::BlockStatus => {
            let req_one = req.flags & proto::CMD_FLAG_REQ_ONE != 0;
            let (off, blen) = (req.offset, req.length);
            let (size, min) = (export.size(), export.min_block_size());
            let r = tokio::task::spawn_blocking(move || export.block_status(off, blen)).await;
            match errno_of(&r) {
                0 => {
                    let ext = r.unwrap().unwrap();
                    let d = proto::block_status_descriptors(off, blen, &ext, size, min, req_one);
                    Reply::new(
                        proto::encode_block_status_chunk(cookie, proto::BASE_ALLOCATION_ID, &d),
                        Vec::new(),
                    )
                }
                e => Reply::error(sr, e, cookie),
            }
        }
        // check_request never lets these through
        Command::Disc | Command::Unknown(_) => Reply::error(sr, proto::EINVAL, cookie),
    }
}

/// Send `head` then `data` (as `write_all` does each): both in one vectored write where the
/// transport takes them, so a large READ reply's header and payload reach the client
/// together (smaller replies are gathered in the writer's buffer as before).
async fn write_reply<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], data: &[u8]) -> io::Result<()> {
    let (mut head, mut data) = (head, data);
    while !head.is_empty() && !data.is_empty() {
        let n = match w
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(data)])
            .await
        {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n.min(head.len() + data.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let h = n.min(head.len());
        head = &head[h..];
        data = &data[n - h..];
    }
    w.write_all(head).await?;
    w.write_all(data).await
}

/// Why the reader stopped.
enum ReaderEnd {
    Disc,
    Eof,
    Shutdown,
    WriterGone,
    Error(SessionError),
}

/// Wait for one request permit and `units` buffer units. While waiting (the connection has
/// [`MAX_IN_FLIGHT`] requests or [`MAX_BUFFERED_BYTES`] in flight), watch the socket: if the
/// client hangs up meanwhile, return [`ReaderEnd::Eof`] (or the error) at once, so the session
/// marks itself abandoned before its queued writes run, rather than after they have drained.
async fn permits<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    requests: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    units: u32,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ReaderEnd> {
    let wanted = async {
        let (Ok(p1), Ok(p2)) = (
            requests.clone().acquire_owned().await,
            bytes.clone().acquire_many_owned(units).await,
        ) else {
            unreachable!("semaphores are never closed")
        };
        (p1, p2)
    };
    tokio::pin!(wanted);
    // Only an empty buffer can tell EOF; with bytes buffered the next request is already here.
    let mut watch = rd.buffer().is_empty();
    loop {
        tokio::select! {
            p = &mut wanted => return Ok(p),
            r = rd.fill_buf(), if watch => match r {
                Ok([]) => return Err(ReaderEnd::Eof),
                Ok(_) => watch = false,
                Err(e) => return Err(ReaderEnd::Error(e.into())),
            },
        }
    }
}

/// Transmission phase (proto.md "Transmission"); READs/WRITEs of at most `inline_limit` bytes
/// (`None`: the export's [`BlockExport::inline_limit`]; `Some(0)`: none) are served inline.
async fn transmission<S>(
    stream: S,
    export: Arc<dyn BlockExport>,
    read_only: bool,
    neg: Negotiated,
    stats: Arc<SessionStats>,
    mut shutdown: watch::Receiver<bool>,
    inline_limit: Option<u32>,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let inline_limit = inline_limit.unwrap_or_else(|| export.inline_limit());
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let wr = BufWriter::with_capacity(256 << 10, wr);
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let (dead_tx, mut dead_rx) = watch::channel(false);
    let size = export.size();
    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(MAX_BUFFERED_BYTES / BUDGET_UNIT));
    // Set when the client is gone without DISC: its writes still queued are dropped
    // (proto.md "Ordering of messages and writes" leaves unacknowledged writes undefined; we
    // make sure they cannot land after another connection's later acknowledged write).
    let abandoned = Arc::new(AtomicBool::new(false));

    let read_loop = async {
        let tx = tx; // dropped when the reader ends, so the writer ends after the last reply
        loop {
            let mut hb = [0u8; proto::REQUEST_LEN];
            let read = tokio::select! {
                r = rd.read_exact(&mut hb) => r,
                _ = wait_shutdown(&mut shutdown) => return ReaderEnd::Shutdown,
                _ = wait_shutdown(&mut dead_rx) => return ReaderEnd::WriterGone,
            };
            if let Err(e) = read {
                return if e.kind() == io::ErrorKind::UnexpectedEof {
                    ReaderEnd::Eof
                } else {
                    ReaderEnd::Error(e.into())
                };
            }
            let req = match proto::parse_request(&hb) {
                Ok(r) => r,
                Err(e) => return ReaderEnd::Error(e.into()),
            };
            SessionStats::add(&stats.requests, 1);
            let verdict = proto::check_request(&req, size, read_only, &neg);
            match verdict {
                Verdict::Disconnect => return ReaderEnd::Disc,
                Verdict::Close => return ReaderEnd::Error(SessionError::WriteTooLarge(req.length)),
                Verdict::Error(err) => {
                    debug!(cookie = req.cookie, ?req.command, err, "request refused");
                    if let Err(e) = discard(&mut rd, u64::from(req.payload_len())).await {
                        return ReaderEnd::Error(e.into());
                    }
                    // Error replies count against the in-flight limit too, so a client that
                    // sends bad requests and never reads replies cannot grow the queue.
                    let (p1, p2) = match permits(&mut rd, &requests, &bytes, 1).await {
                        Ok(p) => p,
                        Err(end) => return end,
                    };
                    let mut reply = Reply::error(neg.structured, err, req.cookie);
                    reply._permits = Some((p1, p2));
                    let _ = tx.send(reply);
                }
                Verdict::Serve => {
                    let buffered = match req.command {
                        Command::Read | Command::Write => req.length as usize,
                        _ => 0,
                    };
                    let units = buffered.div_ceil(BUDGET_UNIT).max(1) as u32;
                    let (p1, p2) = match permits(&mut rd, &requests, &bytes, units).await {
                        Ok(p) => p,
                        Err(end) => return end,
                    };
                    let mut payload = Vec::new();
                    if req.command == Command::Write {
                        payload = BufferPool::global().take(req.length as usize);
                        if let Err(e) = rd.read_exact(&mut payload).await {
                            return ReaderEnd::Error(e.into());
                        }
                    }
                    if moves_data(&req) && req.length <= inline_limit {
                        // Small READ/WRITE: served right here, no task and no thread hand-off.
                        let mut reply =
                            serve_data(&*export, &req, payload, &neg, &stats, &abandoned);
                        reply._permits = Some((p1, p2));
                        let _ = tx.send(reply);
                        continue;
                    }
                    if moves_data(&req) {
                        // Larger READ/WRITE: straight to the blocking pool, whose thread
                        // queues the reply itself (one hand-off; no task in between).
                        let tx = tx.clone();
                        let export = export.clone();
                        let stats = stats.clone();
                        let abandoned = abandoned.clone();
                        // Its log lines name the connection, as the reader's do.
                        let span = tracing::Span::current();
                        tokio::task::spawn_blocking(move || {
                            let _conn = span.enter();
                            let mut reply =
                                serve_data(&*export, &req, payload, &neg, &stats, &abandoned);
                            reply._permits = Some((p1, p2));
                            let _ = tx.send(reply);
                        });
                        continue;
                    }
                    let tx = tx.clone();
                    let export = export.clone();
                    let abandoned = abandoned.clone();
                    tokio::spawn(
                        async move {
                            let mut reply = handle(export, req, neg, abandoned).await;
                            reply._permits = Some((p1, p2));
                            let _ = tx.send(reply);
                        }
                        .in_current_span(),
                    );
                }
            }
        }
    };

    let reader = async {
        let end = read_loop.await;
        if matches!(
            end,
            ReaderEnd::Eof | ReaderEnd::WriterGone | ReaderEnd::Error(_)
        ) {
            abandoned.store(true, Ordering::SeqCst);
        }
        end
    };

    let writer = async move {
        let mut wr = wr;
        let mut ok = true;
        while let Some(first) = rx.recv().await {
            if !ok {
                continue; // keep draining so in-flight requests can finish
            }
            let mut next = Some(first);
            let mut res = Ok(());
            while let Some(r) = next.take() {
                res = write_reply(&mut wr, &r.head, &r.data).await;
                BufferPool::global().give(r.data);
                if res.is_err() {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if res.is_ok() {
                res = wr.flush().await;
            }
            if let Err(e) = res {
                debug!(error = %e, "cannot send replies");
                ok = false;
                let _ = dead_tx.send(true);
            }
        }
        wr
    };

    let (end, mut wr) = tokio::join!(reader, writer);
    // Every in-flight request has finished and its reply has been sent (or dropped).
    let flush = tokio::task::spawn_blocking({
        let export = export.clone();
        move || export.flush()
    })
    .await;
    if errno_of(&flush) != 0 {
        warn!("flush at end of session failed");
    }
    let _ = wr.shutdown().await;
    match end {
        ReaderEnd::Disc => {
            debug!("client disconnected (DISC)");
            Ok(SessionEnd::Disconnected)
        }
        ReaderEnd::Eof | ReaderEnd::WriterGone => {
            debug!("client closed the connection");
            Ok(SessionEnd::ClientClosed)
        }
        ReaderEnd::Shutdown => Ok(SessionEnd::Shutdown),
        ReaderEnd::Error(e) => Err(e),
    }
}
