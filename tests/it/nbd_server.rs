//! Listener behaviour of `serve()`: TCP and Unix together, typed binding errors naming the
//! address, stale-socket replacement, non-socket files left alone; plus a session driven over
//! `tokio::io::duplex`.
//!
//! Over 800 lines: one test per listener and session behaviour, each a few dozen lines of
//! setup around its exports (gated, crowded, panicking); split by concern it would scatter
//! those fixtures.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::nbd::*;
use nbdcrypt::nbd::{
    run_session, serve, BlockExport, ExportConfig, Exports, Listen, NbdError, ServerOptions,
    SessionEnd, SessionOptions, SessionStats,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> ExportConfig {
    ExportConfig {
        name: EXPORT.into(),
        description: None,
        read_only: false,
    }
}

/// `export` as the only export, named [`EXPORT`].
fn one(export: Arc<dyn BlockExport>) -> Vec<(ExportConfig, Arc<dyn BlockExport>)> {
    vec![(config(), export)]
}

/// [`one`] as an [`Exports`] for `run_session`.
fn exports(export: Arc<dyn BlockExport>) -> Arc<Exports> {
    Arc::new(Exports::new(one(export)).unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Bind with `serve` and expect an immediate error.
fn serve_err(listen: Vec<Listen>) -> NbdError {
    let export: Arc<dyn BlockExport> = MemExport::new(MIB, 512);
    rt().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            serve(
                listen,
                one(export),
                ServerOptions::default(),
                std::future::pending(),
            ),
        )
        .await
        .expect("serve did not fail")
        .expect_err("serve should fail to bind")
    })
}

#[test]
fn tcp_and_unix_together() {
    let nbdinfo = tool("nbdinfo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let export = MemExport::new(2 * MIB, 512);
    let exp: Arc<dyn BlockExport> = export.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listen = vec![
        Listen::Tcp(format!("127.0.0.1:{port}").parse().unwrap()),
        Listen::Unix(sock.clone()),
    ];
    let t = std::thread::spawn(move || {
        rt().block_on(serve(listen, one(exp), ServerOptions::default(), async {
            let _ = rx.await;
        }))
    });
    let tcp_uri = format!("nbd://127.0.0.1:{port}/{EXPORT}");
    let unix_uri = format!("nbd+unix:///{EXPORT}?socket={}", sock.display());
    let mut ok = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && sock.exists() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ok, "listeners never came up");
    for uri in [&tcp_uri, &unix_uri] {
        let out = run_ok(std::process::Command::new(&nbdinfo).arg("--size").arg(uri));
        assert_eq!(out.trim(), (2 * MIB).to_string(), "{uri}");
    }
    // the TCP port is now taken: a second serve names it in its error
    let e = serve_err(vec![Listen::Tcp(
        format!("127.0.0.1:{port}").parse().unwrap(),
    )]);
    assert!(matches!(e, NbdError::Bind { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&format!("tcp:127.0.0.1:{port}")),
        "{e}"
    );
    // the Unix socket is live: refused, and left in place
    let e = serve_err(vec![Listen::Unix(sock.clone())]);
    assert!(matches!(e, NbdError::SocketInUse(_)), "{e:?}");
    assert!(sock.exists());
    tx.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert!(!sock.exists(), "socket removed on shutdown");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "TCP still listening"
    );
    assert!(
        export.flushes.load(Ordering::SeqCst) > 0,
        "flushed at shutdown"
    );
}

#[test]
fn unix_path_errors_and_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    // a regular file is not deleted
    let file = dir.path().join("precious");
    std::fs::write(&file, b"keep me").unwrap();
    let e = serve_err(vec![Listen::Unix(file.clone())]);
    assert!(
        matches!(e, NbdError::NotASocket(ref p) if *p == file),
        "{e:?}"
    );
    assert!(e.to_string().contains("precious"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // a missing directory: Bind error naming the path
    let missing = dir.path().join("no/such/dir/sock");
    let e = serve_err(vec![Listen::Unix(missing.clone())]);
    assert!(matches!(e, NbdError::Bind { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    // if the second listener fails, the first one's socket is cleaned up
    let first = dir.path().join("first");
    let e = serve_err(vec![
        Listen::Unix(first.clone()),
        Listen::Unix(file.clone()),
    ]);
    assert!(matches!(e, NbdError::NotASocket(_)), "{e:?}");
    assert!(!first.exists());
    // no listeners at all
    assert!(matches!(serve_err(vec![]), NbdError::NoListeners));
    // a stale socket file (nobody listening) is replaced
    let stale: PathBuf = dir.path().join("stale");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let export: Arc<dyn BlockExport> = MemExport::new(MIB, 512);
    let stale2 = stale.clone();
    rt().block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            vec![Listen::Unix(stale2.clone())],
            one(export),
            ServerOptions::default(),
            async {
                let _ = rx.await;
            },
        ));
        let mut connected = false;
        for _ in 0..200 {
            if let Ok(mut s) = tokio::net::UnixStream::connect(&stale2).await {
                let mut g = [0u8; 8];
                s.read_exact(&mut g).await.unwrap();
                assert_eq!(&g, b"NBDMAGIC");
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(connected, "server on the stale path never answered");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    });
    assert!(!stale.exists());
}

async fn opt<S: AsyncWriteExt + Unpin>(s: &mut S, opt: u32, data: &[u8]) {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).await.unwrap();
}

async fn req<S: AsyncWriteExt + Unpin>(
    s: &mut S,
    flags: u16,
    cmd: u16,
    cookie: u64,
    off: u64,
    len: u32,
) {
    let mut b = REQ_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&off.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b).await.unwrap();
}

async fn reply<S: AsyncReadExt + Unpin>(s: &mut S) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(h[0..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

/// The client side of a session over `tokio::io::duplex`.
type Rd = tokio::io::ReadHalf<tokio::io::DuplexStream>;
type Wr = tokio::io::WriteHalf<tokio::io::DuplexStream>;
type Session = tokio::task::JoinHandle<Result<SessionEnd, nbdcrypt::nbd::SessionError>>;

/// Run `run_session` for `exports` over a duplex pipe of `buf` bytes, read the greeting
/// (checking its magic) and send the client flags `FIXED_NEWSTYLE | NO_ZEROES`.
async fn duplex_session(
    exports: Arc<Exports>,
    stats: Arc<SessionStats>,
    stop: tokio::sync::watch::Receiver<bool>,
    buf: usize,
) -> (Session, Rd, Wr) {
    duplex_session_with(exports, stats, stop, buf, SessionOptions::default()).await
}

/// [`duplex_session`] with session options `opts`.
async fn duplex_session_with(
    exports: Arc<Exports>,
    stats: Arc<SessionStats>,
    stop: tokio::sync::watch::Receiver<bool>,
    buf: usize,
    opts: SessionOptions,
) -> (Session, Rd, Wr) {
    let (client, server) = tokio::io::duplex(buf);
    let session = tokio::spawn(run_session(server, exports, stats, opts, stop));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut g = [0u8; 18];
    rd.read_exact(&mut g).await.unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    wr.write_all(&3u32.to_be_bytes()).await.unwrap();
    (session, rd, wr)
}

/// `NBD_OPT_EXPORT_NAME` for `name`; returns the 10-byte reply (size, flags; NO_ZEROES).
async fn export_name(rd: &mut Rd, wr: &mut Wr, name: &[u8]) -> [u8; 10] {
    opt(wr, 1, name).await;
    let mut r = [0u8; 10];
    rd.read_exact(&mut r).await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_over_duplex() {
    let export = MemExport::new(MIB, 512);
    let exp: Arc<dyn BlockExport> = export.clone();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(SessionStats::default());
    let (session, mut rd, mut wr) =
        duplex_session(exports(exp), stats.clone(), stop_rx, 64 << 10).await;
    let r = export_name(&mut rd, &mut wr, EXPORT.as_bytes()).await; // NO_ZEROES: 10 bytes
    assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), MIB as u64);
    // overlapping requests in flight have no defined order (proto.md "Ordering of messages
    // and writes"), so wait for the WRITE before zeroing part of it
    req(&mut wr, 1, CMD_WRITE, 1, 100, 1000).await;
    wr.write_all(&[7u8; 1000]).await.unwrap();
    assert_eq!(reply(&mut rd).await, (0, 1));
    req(&mut wr, 0, CMD_WRITE_ZEROES, 2, 200, 100).await;
    assert_eq!(reply(&mut rd).await, (0, 2));
    req(&mut wr, 0, CMD_READ, 3, 100, 1000).await;
    assert_eq!(reply(&mut rd).await, (0, 3));
    let mut data = vec![0u8; 1000];
    rd.read_exact(&mut data).await.unwrap();
    let mut want = vec![7u8; 1000];
    want[100..200].fill(0);
    assert_eq!(data, want);
    req(&mut wr, 0, CMD_FLUSH, 4, 0, 0).await;
    assert_eq!(reply(&mut rd).await, (0, 4));
    req(&mut wr, 0, CMD_WRITE, 5, 0, 4).await;
    wr.write_all(b"last").await.unwrap();
    req(&mut wr, 0, CMD_DISC, 6, 0, 0).await;
    assert_eq!(reply(&mut rd).await, (0, 5));
    let mut rest = Vec::new();
    rd.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "no reply to DISC");
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Disconnected);
    assert_eq!(export.snapshot(0, 4), b"last");
    assert!(
        export.flushes.load(Ordering::SeqCst) >= 2,
        "FLUSH and the DISC flush"
    );
    assert_eq!(export.fua_writes.load(Ordering::SeqCst), 1);
    // the counters of the per-connection log line
    assert_eq!(stats.export.get().map(String::as_str), Some(EXPORT));
    assert_eq!(stats.requests.load(Ordering::SeqCst), 6, "DISC included");
    assert_eq!(stats.bytes_written.load(Ordering::SeqCst), 1004);
    assert_eq!(stats.bytes_read.load(Ordering::SeqCst), 1000);
    assert!(!stats.structured.load(Ordering::SeqCst));
    assert!(!stats.meta_context.load(Ordering::SeqCst));
    assert!(!stats.tls.load(Ordering::SeqCst));
}

#[tokio::test]
async fn session_shutdown_and_abort() {
    let export: Arc<dyn BlockExport> = MemExport::new(MIB, 512);
    // shutdown while in transmission
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (session, mut rd, mut wr) =
        duplex_session(exports(export.clone()), Arc::default(), stop_rx, 4096).await;
    export_name(&mut rd, &mut wr, b"").await;
    stop_tx.send(true).unwrap();
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Shutdown);
    // ABORT: ACK then the session ends
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (session, mut rd, mut wr) =
        duplex_session(exports(export.clone()), Arc::default(), stop_rx, 4096).await;
    opt(&mut wr, 2, b"").await;
    let mut ack = [0u8; 20];
    rd.read_exact(&mut ack).await.unwrap();
    assert_eq!(u32::from_be_bytes(ack[12..16].try_into().unwrap()), 1);
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Aborted);
}

/// Run `serve` with one RAM export on its own thread until the returned sender fires.
fn spawn_serve(
    listen: Vec<Listen>,
    options: ServerOptions,
) -> (
    std::thread::JoinHandle<Result<(), NbdError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let exp: Arc<dyn BlockExport> = MemExport::new(2 * MIB, 512);
    let t = std::thread::spawn(move || {
        rt().block_on(serve(listen, one(exp), options, async {
            let _ = rx.await;
        }))
    });
    (t, tx)
}

/// `nbdinfo --size URI`, retried until the server answers (it binds asynchronously).
fn size_when_up(uri: &str) -> String {
    let nbdinfo = tool("nbdinfo");
    for _ in 0..500 {
        let o = run(std::process::Command::new(&nbdinfo).arg("--size").arg(uri));
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{uri} never answered");
}

/// Listening sockets this process already holds (as systemd passes them) are served, TCP and
/// Unix told apart by the socket itself; the server owns and closes them, and leaves an
/// inherited Unix socket's file alone.
#[test]
fn inherited_listening_sockets_are_served() {
    use std::os::fd::IntoRawFd;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inherited.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let listen = vec![
        Listen::Fd {
            fd: tcp.into_raw_fd(),
            name: Some("nbd-tcp".into()),
        },
        Listen::Fd {
            fd: unix.into_raw_fd(),
            name: None,
        },
    ];
    let (t, stop) = spawn_serve(listen, ServerOptions::default());
    let two = (2 * MIB).to_string();
    assert_eq!(
        size_when_up(&format!("nbd://127.0.0.1:{port}/{EXPORT}")),
        two
    );
    let unix_uri = format!("nbd+unix:///{EXPORT}?socket={}", path.display());
    assert_eq!(size_when_up(&unix_uri), two);
    stop.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the inherited TCP socket is closed at shutdown"
    );
    assert!(
        path.exists(),
        "an inherited socket's file is not ours to remove"
    );
}

#[test]
fn inherited_descriptors_that_are_not_listening_stream_sockets_are_refused() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("f")).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // SAFETY: a plain socket(2) call; the descriptor is closed below.
    let unlistened = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(unlistened >= 0);
    for (fd, why) in [
        (file.as_raw_fd(), "not a socket"),
        (udp.as_raw_fd(), "not SOCK_STREAM"),
        (unlistened, "not listening"),
    ] {
        let e = serve_err(vec![Listen::Fd { fd, name: None }]);
        assert!(
            matches!(e, NbdError::NotAListener { fd: f, .. } if f == fd),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("fd:{fd}")) && text.contains(why),
            "{text}"
        );
    }
    // SAFETY: closes the descriptor made above (serve did not take it).
    unsafe { libc::close(unlistened) };
}

#[test]
fn pid_file_written_once_listening_and_removed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let pid = dir.path().join("nbd.pid");
    let options = ServerOptions {
        pid_file: Some(pid.clone()),
        ..ServerOptions::default()
    };
    let (t, stop) = spawn_serve(vec![Listen::Unix(sock.clone())], options);
    let mut waited = 0;
    while !pid.exists() {
        assert!(!t.is_finished(), "serve ended during start-up");
        assert!(waited < 500, "pid file never written");
        waited += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    // once the pid file exists the socket accepts, first try
    assert!(Raw::greeted(&sock));
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap(),
        format!("{}\n", std::process::id())
    );
    stop.send(()).unwrap();
    t.join().unwrap().unwrap();
    assert!(!pid.exists(), "pid file removed at shutdown");
    assert!(!sock.exists());
    // an unwritable pid file: typed error naming it, nothing left listening
    let bad = dir.path().join("missing/dir/nbd.pid");
    let options = ServerOptions {
        pid_file: Some(bad.clone()),
        ..ServerOptions::default()
    };
    let (t, _stop) = spawn_serve(vec![Listen::Unix(sock.clone())], options);
    let e = t.join().unwrap().expect_err("pid file cannot be written");
    assert!(
        matches!(e, NbdError::PidFile { ref path, .. } if *path == bad),
        "{e:?}"
    );
    assert!(e.to_string().contains("missing/dir/nbd.pid"), "{e}");
    assert!(
        !sock.exists(),
        "the socket is removed when the pid file fails"
    );
}

/// A [`MemExport`] that holds every write of `DOOMED` bytes until `release` is set, then (in
/// `write_at_unless`) waits up to 10 s for the session to mark its connection abandoned
/// before deciding, as an export that orders writes under a lock would.
struct GateExport {
    mem: Arc<MemExport>,
    entered: std::sync::atomic::AtomicUsize,
    release: std::sync::atomic::AtomicBool,
}

const DOOMED: u8 = 0xAA;

impl GateExport {
    fn gate(&self, data: &[u8]) {
        if data.first() == Some(&DOOMED) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            wait_until(|| self.release.load(Ordering::SeqCst));
        }
    }
}

impl BlockExport for GateExport {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn min_block_size(&self) -> u32 {
        self.mem.min_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        self.gate(data);
        self.mem.write_at(data, offset, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.mem.write_zeroes(offset, len, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.mem.flush()
    }
    fn write_at_unless(
        &self,
        data: &mut [u8],
        offset: u64,
        fua: bool,
        abandoned: &std::sync::atomic::AtomicBool,
    ) -> std::io::Result<bool> {
        self.gate(data);
        if data.first() == Some(&DOOMED) {
            wait_until(|| abandoned.load(Ordering::SeqCst));
        }
        if abandoned.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.mem.write_at(data, offset, fua).map(|()| true)
    }
}

/// Connection A sends `writes` writes (then a FLUSH if `flush`) and hangs up while they are
/// still queued; connection B then writes the same range and is acknowledged. A's writes must
/// never land after B's (the requirement "A connection that dies leaves no write of it that lands
/// after a later acknowledged write from another connection to the same range"): the range
/// reads B's bytes at the end.
async fn dead_connection_case(writes: usize, flush: bool) {
    let gate = Arc::new(GateExport {
        mem: MemExport::new(MIB, 512),
        entered: 0.into(),
        release: false.into(),
    });
    let exps = exports(gate.clone());
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sessions = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (session, mut rd, mut wr) =
            duplex_session(exps.clone(), Arc::default(), stop_rx.clone(), 64 << 10).await;
        export_name(&mut rd, &mut wr, EXPORT.as_bytes()).await;
        sessions.push(session);
        clients.push((rd, wr));
    }
    let (mut b_rd, mut b_wr) = clients.pop().unwrap();
    let (a_rd, mut a_wr) = clients.pop().unwrap();
    for i in 0..writes {
        req(
            &mut a_wr,
            0,
            CMD_WRITE,
            i as u64,
            4096 * (i as u64 + 1),
            4096,
        )
        .await;
        a_wr.write_all(&[DOOMED; 4096]).await.unwrap();
    }
    if flush {
        req(&mut a_wr, 0, CMD_FLUSH, 999, 0, 0).await;
    }
    for _ in 0..2000 {
        if gate.entered.load(Ordering::SeqCst) == writes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        gate.entered.load(Ordering::SeqCst),
        writes,
        "A's writes never all reached the export"
    );
    drop((a_rd, a_wr)); // A hangs up with its writes queued
    let len = 4096 * writes as u32;
    req(&mut b_wr, 0, CMD_WRITE, 2, 4096, len).await;
    b_wr.write_all(&vec![0xBB; len as usize]).await.unwrap();
    assert_eq!(reply(&mut b_rd).await, (0, 2), "B's write acknowledged");
    gate.release.store(true, Ordering::SeqCst);
    let a_end = sessions.remove(0).await.unwrap().unwrap();
    assert_eq!(a_end, SessionEnd::ClientClosed);
    assert!(
        gate.mem.snapshot(4096, len as usize) == vec![0xBB; len as usize],
        "a dead connection's write landed after B's acknowledged write"
    );
    req(&mut b_wr, 0, CMD_DISC, 3, 0, 0).await;
    assert_eq!(
        sessions.remove(0).await.unwrap().unwrap(),
        SessionEnd::Disconnected
    );
}

/// One queued write: the session sees the hang-up while waiting for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connection_write_never_lands_after_a_later_acknowledged_one() {
    dead_connection_case(1, false).await;
}

/// 64 queued writes fill the in-flight limit, and the FLUSH behind them waits for a slot: the
/// session must see the hang-up while waiting, not only once a write has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connection_seen_while_the_in_flight_limit_is_full() {
    dead_connection_case(64, true).await;
}

/// Requests pipelined on one connection.
const PIPELINED: usize = 64;

/// A [`MemExport`] whose reads wait until [`PIPELINED`] of them are inside the export at once
/// (or 10 s pass), recording the most seen together; the read at offset 0 then also waits
/// until every other read has finished, so its reply can only come last.
struct CrowdExport {
    mem: Arc<MemExport>,
    inside: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicUsize,
}

/// Poll `cond` every 5 ms until it holds, for up to 10 s.
fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl BlockExport for CrowdExport {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn min_block_size(&self) -> u32 {
        self.mem.min_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        wait_until(|| self.most.load(Ordering::SeqCst) >= PIPELINED);
        if offset == 0 {
            wait_until(|| self.finished.load(Ordering::SeqCst) == PIPELINED - 1);
        }
        let r = self.mem.read_at(buf, offset);
        self.finished.fetch_add(1, Ordering::SeqCst);
        r
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        self.mem.write_at(data, offset, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.mem.write_zeroes(offset, len, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.mem.flush()
    }
}

/// 64 READs pipelined on one connection are all inside the export at the same time (handled
/// in parallel, not one after another), and the one held back is answered last: replies go
/// out as requests finish, matched by cookie, not in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_requests_in_flight_and_replies_out_of_order() {
    let crowd = Arc::new(CrowdExport {
        mem: MemExport::new(MIB, 512),
        inside: 0.into(),
        most: 0.into(),
        finished: 0.into(),
    });
    for i in 0..PIPELINED {
        crowd
            .mem
            .write_at(&[i as u8; 512], i as u64 * 512, false)
            .unwrap();
    }
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (session, mut rd, mut wr) =
        duplex_session(exports(crowd.clone()), Arc::default(), stop_rx, 1 << 20).await;
    export_name(&mut rd, &mut wr, EXPORT.as_bytes()).await;
    for i in 0..PIPELINED {
        req(&mut wr, 0, CMD_READ, i as u64, i as u64 * 512, 512).await;
    }
    let mut order = Vec::new();
    for _ in 0..PIPELINED {
        let (err, cookie) = reply(&mut rd).await;
        assert_eq!(err, 0);
        let mut data = [0u8; 512];
        rd.read_exact(&mut data).await.unwrap();
        assert!(
            data == [cookie as u8; 512],
            "reply {cookie} carries its own data"
        );
        order.push(cookie);
    }
    assert_eq!(
        crowd.most.load(Ordering::SeqCst),
        PIPELINED,
        "requests were not all in the export at once"
    );
    assert_eq!(order.last(), Some(&0), "cookie 0 was held back: {order:?}");
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..PIPELINED as u64).collect::<Vec<_>>());
    req(&mut wr, 0, CMD_DISC, 999, 0, 0).await;
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Disconnected);
}

/// A [`MemExport`] that serves READs/WRITEs of up to 64 KiB inline (as a volume does) and
/// records how many calls of each kind were inside it at once: small calls stay 2 ms inside
/// (so any two served concurrently overlap; with `gather_small` > 0 instead until that many
/// are inside, or 10 s), large READs wait until 4 are inside (or 10 s).
struct InlineExport {
    mem: Arc<MemExport>,
    inside: std::sync::atomic::AtomicUsize,
    most_small: std::sync::atomic::AtomicUsize,
    most_large: std::sync::atomic::AtomicUsize,
    gather_small: usize,
}

impl InlineExport {
    fn new(mem: Arc<MemExport>, gather_small: usize) -> Arc<InlineExport> {
        Arc::new(InlineExport {
            mem,
            inside: 0.into(),
            most_small: 0.into(),
            most_large: 0.into(),
            gather_small,
        })
    }

    fn enter(&self, len: usize) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        if len <= 64 << 10 {
            self.most_small.fetch_max(now, Ordering::SeqCst);
            if self.gather_small > 0 {
                wait_until(|| self.most_small.load(Ordering::SeqCst) >= self.gather_small);
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            self.most_large.fetch_max(now, Ordering::SeqCst);
            wait_until(|| self.most_large.load(Ordering::SeqCst) >= 4);
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BlockExport for InlineExport {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn min_block_size(&self) -> u32 {
        self.mem.min_block_size()
    }
    fn inline_limit(&self) -> u32 {
        64 << 10
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.enter(buf.len());
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        self.enter(data.len());
        self.mem.write_at(data, offset, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.mem.write_zeroes(offset, len, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.mem.flush()
    }
}

/// With an export's `inline_limit` of 64 KiB, pipelined READs and WRITEs up to that size are
/// served one at a time (inline on the connection's reader), with the right data although
/// their buffers are reused from request to request; one byte-sector over the limit, READs
/// again run in parallel on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_are_served_inline_large_ones_in_parallel() {
    let ex = InlineExport::new(MemExport::new(4 * MIB, 512), 0);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (session, mut rd, mut wr) =
        duplex_session(exports(ex.clone()), Arc::default(), stop_rx, 1 << 20).await;
    export_name(&mut rd, &mut wr, EXPORT.as_bytes()).await;
    // 4 KiB and 64 KiB (the limit) writes of distinct patterns, pipelined; then read back.
    let sizes: Vec<u32> = (0..24)
        .map(|i| if i % 3 == 0 { 64 << 10 } else { 4096 })
        .collect();
    let offset = |i: usize| i as u64 * (64 << 10);
    let pattern = |i: usize, len: u32| -> Vec<u8> {
        (0..len).map(|b| (b as usize * 7 + i * 13) as u8).collect()
    };
    for (i, &len) in sizes.iter().enumerate() {
        req(&mut wr, 0, CMD_WRITE, i as u64, offset(i), len).await;
        wr.write_all(&pattern(i, len)).await.unwrap();
    }
    for _ in &sizes {
        assert_eq!(reply(&mut rd).await.0, 0);
    }
    for (i, &len) in sizes.iter().enumerate() {
        req(&mut wr, 0, CMD_READ, i as u64, offset(i), len).await;
    }
    for _ in &sizes {
        let (err, cookie) = reply(&mut rd).await;
        assert_eq!(err, 0);
        let i = cookie as usize;
        let mut data = vec![0u8; sizes[i] as usize];
        rd.read_exact(&mut data).await.unwrap();
        assert!(
            data == pattern(i, sizes[i]),
            "READ {i} returns what WRITE {i} wrote"
        );
    }
    assert_eq!(
        ex.most_small.load(Ordering::SeqCst),
        1,
        "small requests were served concurrently, not inline"
    );
    for i in 0..4u64 {
        req(
            &mut wr,
            0,
            CMD_READ,
            100 + i,
            i * MIB as u64,
            (64 << 10) + 512,
        )
        .await;
    }
    for _ in 0..4 {
        let (err, _) = reply(&mut rd).await;
        assert_eq!(err, 0);
        let mut data = vec![0u8; (64 << 10) + 512];
        rd.read_exact(&mut data).await.unwrap();
    }
    assert_eq!(
        ex.most_large.load(Ordering::SeqCst),
        4,
        "READs over the limit did not run in parallel"
    );
    req(&mut wr, 0, CMD_DISC, 999, 0, 0).await;
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Disconnected);
}

/// `SessionOptions::inline_limit = Some(0)` overrides the export's 64 KiB: 4 KiB READs and
/// WRITEs pipelined on one connection are all inside the export at once (on the blocking
/// pool, not one after another on the reader, which would leave only one inside), and the
/// data is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_limit_zero_serves_small_requests_in_parallel() {
    const N: usize = 4;
    let ex = InlineExport::new(MemExport::new(MIB, 512), N);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = SessionOptions {
        inline_limit: Some(0),
        ..SessionOptions::default()
    };
    let (session, mut rd, mut wr) =
        duplex_session_with(exports(ex.clone()), Arc::default(), stop_rx, 1 << 20, opts).await;
    export_name(&mut rd, &mut wr, EXPORT.as_bytes()).await;
    let pattern = |i: usize| -> Vec<u8> { (0..4096).map(|b| (b * 7 + i * 13) as u8).collect() };
    for i in 0..N {
        req(&mut wr, 0, CMD_WRITE, i as u64, i as u64 * 8192, 4096).await;
        wr.write_all(&pattern(i)).await.unwrap();
    }
    for _ in 0..N {
        assert_eq!(reply(&mut rd).await.0, 0);
    }
    assert_eq!(
        ex.most_small.load(Ordering::SeqCst),
        N,
        "WRITEs were not all in the export at once: served inline"
    );
    ex.most_small.store(0, Ordering::SeqCst);
    for i in 0..N {
        req(&mut wr, 0, CMD_READ, i as u64, i as u64 * 8192, 4096).await;
    }
    for _ in 0..N {
        let (err, cookie) = reply(&mut rd).await;
        assert_eq!(err, 0);
        let mut data = vec![0u8; 4096];
        rd.read_exact(&mut data).await.unwrap();
        assert!(
            data == pattern(cookie as usize),
            "READ {cookie} returns its WRITE"
        );
    }
    assert_eq!(
        ex.most_small.load(Ordering::SeqCst),
        N,
        "READs were not all in the export at once: served inline"
    );
    req(&mut wr, 0, CMD_DISC, 999, 0, 0).await;
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Disconnected);
}

/// An export whose READs and WRITEs at [`PanicExport::AT`] panic (a bug in an export); READs
/// and WRITEs of up to 64 KiB are served inline, as by a volume.
struct PanicExport(Arc<MemExport>);

impl PanicExport {
    const AT: u64 = 512 << 10;
}

impl BlockExport for PanicExport {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn min_block_size(&self) -> u32 {
        self.0.min_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        assert_ne!(offset, Self::AT, "export bug (READ)");
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        assert_ne!(offset, Self::AT, "export bug (WRITE)");
        self.0.write_at(data, offset, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.0.write_zeroes(offset, len, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn inline_limit(&self) -> u32 {
        64 << 10
    }
}

/// A panic inside the export while serving a READ or WRITE, inline (4 KiB) or on the
/// blocking pool (128 KiB, over the 64 KiB inline limit), is an EIO reply for that request;
/// the connection goes on serving. (Without the reply the client would wait forever: each
/// step has a time limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_panic_in_a_read_or_write_is_eio_and_the_connection_goes_on() {
    let mem = MemExport::new(MIB, 512);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ex: Arc<dyn BlockExport> = Arc::new(PanicExport(mem));
    let (session, mut rd, mut wr) =
        duplex_session(exports(ex), Arc::default(), stop_rx, 1 << 20).await;
    export_name(&mut rd, &mut wr, EXPORT.as_bytes()).await;
    let steps = async {
        for (i, len) in [4096u32, 128 << 10].into_iter().enumerate() {
            let c = 10 * i as u64;
            req(&mut wr, 0, CMD_WRITE, c + 1, PanicExport::AT, len).await;
            wr.write_all(&vec![9u8; len as usize]).await.unwrap();
            assert_eq!(
                reply(&mut rd).await,
                (EIO, c + 1),
                "WRITE of {len} that panicked"
            );
            req(&mut wr, 0, CMD_READ, c + 2, PanicExport::AT, len).await;
            assert_eq!(reply(&mut rd).await, (EIO, c + 2), "READ of {len}, no data");
            req(&mut wr, 0, CMD_WRITE, c + 3, 0, len).await;
            wr.write_all(&vec![i as u8 + 1; len as usize])
                .await
                .unwrap();
            assert_eq!(reply(&mut rd).await, (0, c + 3));
            req(&mut wr, 0, CMD_READ, c + 4, 0, len).await;
            assert_eq!(reply(&mut rd).await, (0, c + 4));
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await.unwrap();
            assert!(
                data.iter().all(|&b| b == i as u8 + 1),
                "READ of {len} after the panics"
            );
        }
        req(&mut wr, 0, CMD_DISC, 99, 0, 0).await;
        session.await.unwrap().unwrap()
    };
    let end = tokio::time::timeout(Duration::from_secs(30), steps)
        .await
        .expect("a reply never came (the panic was not turned into EIO)");
    assert_eq!(end, SessionEnd::Disconnected);
}
