//! The transmission phase (proto.md "Transmission", "Ordering of messages and writes"): the
//! reader that parses and validates requests under the in-flight and byte budgets, serving
//! small READs/WRITEs inline, larger ones on the blocking pool and every other command in a
//! task of its own; the writer that sends replies in completion order; and the final flush.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn, Instrument};

use super::error::{SessionEnd, SessionError};
use super::reply::{errno_of, errno_of_write, write_reply, Permits, Reply};
use super::stats::SessionStats;
use super::stream::{discard_within, read_exact_within, wait_shutdown};
use crate::budget::{units_of, ConnBudget, MemoryBudget, BUDGET_UNIT};
use crate::buffers::BufferPool;
use crate::export::BlockExport;
use crate::proto::{self, Command, Errno, Negotiated, Request, Verdict};

/// Most requests handled concurrently on one connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most bytes of READ/WRITE buffers held by one connection (requests plus unsent replies).
pub const MAX_BUFFERED_BYTES: usize = 256 << 20;

/// Per-connection limits of [`transmission`] (from [`super::SessionOptions`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Limits {
    /// READs/WRITEs of at most this many bytes are served inline (`None`: the export's
    /// [`BlockExport::inline_limit`]; `Some(0)`: none).
    pub(super) inline_limit: Option<u32>,
    /// Close the connection once it has sent no request for this long while nothing was in
    /// flight (`None`: never).
    pub(super) idle_limit: Option<Duration>,
    /// The server-wide buffer budget (`None`: only the per-connection limits).
    pub(super) budget: Option<MemoryBudget>,
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
                None => Reply::new(proto::encode_simple_reply(None, cookie).to_vec(), buf),
            }
        }
        Err(e) => {
            pool.give(buf);
            Reply::status(sr, errno_of::<()>(&Ok(Err(e))), cookie)
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
    if err.is_ok() {
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
        Reply::error(neg.structured, Errno::Eio, req.cookie)
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
                Ok(()) => {
                    let ext = r.unwrap().unwrap();
                    let d = proto::block_status_descriptors(off, blen, &ext, size, min, req_one);
                    Reply::new(
                        proto::encode_block_status_chunk(cookie, proto::BASE_ALLOCATION_ID, &d),
                        Vec::new(),
                    )
                }
                Err(e) => Reply::error(sr, e, cookie),
            }
        }
        // check_request never lets these through
        Command::Disc | Command::Unknown(_) => Reply::error(sr, Errno::Einval, cookie),
    }
}

/// A read error in the middle of a request: [`ReaderEnd::Idle`] for a client that stalled
/// past the idle limit ([`read_exact_within`]), else the error.
fn stalled_or(e: io::Error) -> ReaderEnd {
    if e.kind() == io::ErrorKind::TimedOut {
        ReaderEnd::Idle
    } else {
        ReaderEnd::Error(e.into())
    }
}

/// Why the reader stopped.
enum ReaderEnd {
    Disc,
    Eof,
    Shutdown,
    WriterGone,
    /// No request for the idle limit while nothing was in flight, or no byte for the idle
    /// limit in the middle of a request.
    Idle,
    Error(SessionError),
}

/// Wait for one request permit and `units` buffer units of the connection's budget, then of
/// the server-wide one (`shared`, if any; [`ConnBudget::take`]). While waiting (the
/// connection has [`MAX_IN_FLIGHT`] requests or [`MAX_BUFFERED_BYTES`] in flight, or the
/// server's budget is spent), watch the socket: if the client hangs up meanwhile, return
/// [`ReaderEnd::Eof`] (or the error) at once, so the session marks itself abandoned before its
/// queued writes run, rather than after they have drained.
async fn permits<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    requests: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    shared: Option<&ConnBudget>,
    units: u32,
) -> Result<Permits, ReaderEnd> {
    // The fast path: everything free now (uncontended try_acquires, no await).
    if let (Ok(r), Ok(b)) = (
        requests.clone().try_acquire_owned(),
        bytes.clone().try_acquire_many_owned(units),
    ) {
        match shared.map(|c| c.try_take(units)) {
            None => return Ok(permits_of(r, b, None)),
            Some(Some(s)) => return Ok(permits_of(r, b, Some(s))),
            Some(None) => {} // dropped; taken again below, in order
        }
    }
    let wanted = async {
        let (Ok(p1), Ok(p2)) = (
            requests.clone().acquire_owned().await,
            bytes.clone().acquire_many_owned(units).await,
        ) else {
            unreachable!("semaphores are never closed")
        };
        let p3 = match shared {
            Some(c) => Some(c.take(units).await),
            None => None,
        };
        permits_of(p1, p2, p3)
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

fn permits_of(
    request: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
    shared: Option<OwnedSemaphorePermit>,
) -> Permits {
    Permits {
        _request: request,
        _bytes: bytes,
        _shared: shared,
    }
}

/// Wait until the next request's first byte is buffered (`Ok(true)`), the client closed the
/// connection (`Ok(false)`), or, with an idle limit, that long passed without a request while
/// nothing was in flight ([`ReaderEnd::Idle`]). Cancel-safe (`fill_buf` consumes nothing).
async fn next_request<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    idle_limit: Option<Duration>,
    requests: &Semaphore,
) -> Result<bool, ReaderEnd> {
    let Some(idle) = idle_limit else {
        return Ok(true); // read_exact tells EOF itself
    };
    loop {
        tokio::select! {
            r = rd.fill_buf() => return match r {
                Ok([]) => Ok(false),
                Ok(_) => Ok(true),
                Err(e) => Err(ReaderEnd::Error(e.into())),
            },
            _ = tokio::time::sleep(idle) => {
                if requests.available_permits() == MAX_IN_FLIGHT {
                    return Err(ReaderEnd::Idle);
                }
                // Requests still in flight: not idle; look again one period later.
            }
        }
    }
}

/// Transmission phase (proto.md "Transmission") under `limits` ([`Limits`]).
pub(super) async fn transmission<S>(
    stream: S,
    export: Arc<dyn BlockExport>,
    read_only: bool,
    neg: Negotiated,
    stats: Arc<SessionStats>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<SessionEnd, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let inline_limit = limits.inline_limit.unwrap_or_else(|| export.inline_limit());
    let shared = limits.budget.as_ref().map(MemoryBudget::connection);
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
                r = async {
                    match next_request(&mut rd, limits.idle_limit, &requests).await {
                        Ok(true) => Ok(read_exact_within(&mut rd, &mut hb, limits.idle_limit).await),
                        Ok(false) => Err(ReaderEnd::Eof),
                        Err(end) => Err(end),
                    }
                } => match r {
                    Ok(r) => r,
                    Err(end) => return end,
                },
                _ = wait_shutdown(&mut shutdown) => return ReaderEnd::Shutdown,
                _ = wait_shutdown(&mut dead_rx) => return ReaderEnd::WriterGone,
            };
            if let Err(e) = read {
                return match e.kind() {
                    io::ErrorKind::UnexpectedEof => ReaderEnd::Eof,
                    io::ErrorKind::TimedOut => ReaderEnd::Idle,
                    _ => ReaderEnd::Error(e.into()),
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
                    debug!(cookie = req.cookie, ?req.command, err = err.value(), "request refused");
                    let len = u64::from(req.payload_len());
                    if let Err(e) = discard_within(&mut rd, len, limits.idle_limit).await {
                        return stalled_or(e);
                    }
                    // Error replies count against the in-flight limit too, so a client that
                    // sends bad requests and never reads replies cannot grow the queue.
                    let p = match permits(&mut rd, &requests, &bytes, shared.as_ref(), 1).await {
                        Ok(p) => p,
                        Err(end) => return end,
                    };
                    let mut reply = Reply::error(neg.structured, err, req.cookie);
                    reply._permits = Some(p);
                    let _ = tx.send(reply);
                }
                Verdict::Serve => {
                    let buffered = match req.command {
                        Command::Read | Command::Write => req.length as usize,
                        _ => 0,
                    };
                    let units = units_of(buffered);
                    let p = match permits(&mut rd, &requests, &bytes, shared.as_ref(), units).await
                    {
                        Ok(p) => p,
                        Err(end) => return end,
                    };
                    let mut payload = Vec::new();
                    if req.command == Command::Write {
                        payload = BufferPool::global().take(req.length as usize);
                        let read = read_exact_within(&mut rd, &mut payload, limits.idle_limit);
                        if let Err(e) = read.await {
                            return stalled_or(e);
                        }
                    }
                    if moves_data(&req) && req.length <= inline_limit {
                        // Small READ/WRITE: served right here, no task and no thread hand-off.
                        let mut reply =
                            serve_data(&*export, &req, payload, &neg, &stats, &abandoned);
                        reply._permits = Some(p);
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
                            reply._permits = Some(p);
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
                            reply._permits = Some(p);
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
    if errno_of(&flush).is_err() {
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
        ReaderEnd::Idle => {
            debug!("idle limit reached");
            Ok(SessionEnd::Idle)
        }
        ReaderEnd::Error(e) => Err(e),
    }
}
