//! Shared helpers for the NBD integration tests: an in-memory [`BlockExport`], an in-process
//! server on a Unix socket in a temp dir, external tool lookup, and a raw-socket client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use nbdcrypt::nbd::{serve, BlockExport, ExportConfig, Listen, NbdError, ServerOptions, TlsConfig};

/// A RAM export: bytes behind a RwLock, counting calls so tests can see what reached it.
pub struct MemExport {
    pub data: RwLock<Vec<u8>>,
    pub min_block: u32,
    pub flushes: AtomicU64,
    pub fua_writes: AtomicU64,
}

impl MemExport {
    pub fn new(size: usize, min_block: u32) -> Arc<MemExport> {
        Arc::new(MemExport {
            data: RwLock::new(vec![0u8; size]),
            min_block,
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        })
    }

    pub fn snapshot(&self, offset: usize, len: usize) -> Vec<u8> {
        self.data.read().unwrap()[offset..offset + len].to_vec()
    }
}

impl BlockExport for MemExport {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }
    fn min_block_size(&self) -> u32 {
        self.min_block
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.data.read().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        let mut d = self.data.write().unwrap();
        let o = offset as usize;
        d[o..o + data.len()].copy_from_slice(data);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        let mut d = self.data.write().unwrap();
        let o = offset as usize;
        d[o..o + len as usize].fill(0);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub const EXPORT: &str = "vol";
pub const MIB: usize = 1 << 20;

/// An in-process server on `DIR/nbd.sock`, running on its own tokio runtime thread.
/// `export` is the first (default) export.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub export: Arc<MemExport>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), NbdError>>>,
}

impl TestServer {
    /// Start serving `export` as [`EXPORT`]; returns once the socket accepts connections.
    pub fn start(export: Arc<MemExport>, read_only: bool) -> TestServer {
        TestServer::start_tls(export, read_only, TlsConfig::off())
    }

    /// [`TestServer::start`] with a TLS mode and acceptor.
    pub fn start_tls(export: Arc<MemExport>, read_only: bool, tls: TlsConfig) -> TestServer {
        let config = ExportConfig {
            name: EXPORT.to_string(),
            description: Some("test volume".to_string()),
            read_only,
        };
        let options = ServerOptions {
            tls,
            ..ServerOptions::default()
        };
        TestServer::start_many(vec![(config, export)], options)
    }

    /// Start serving several exports (the first is the default export and [`TestServer::export`]);
    /// returns once the socket accepts connections.
    pub fn start_many(
        exports: Vec<(ExportConfig, Arc<MemExport>)>,
        options: ServerOptions,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let export = exports[0].1.clone();
        let exps: Vec<(ExportConfig, Arc<dyn BlockExport>)> = exports
            .into_iter()
            .map(|(c, e)| (c, e as Arc<dyn BlockExport>))
            .collect();
        let listen = vec![Listen::Unix(sock.clone())];
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listen, exps, options, async {
                let _ = stop_rx.await;
            }))
        });
        for _ in 0..500 {
            if UnixStream::connect(&sock).is_ok() {
                break;
            }
            assert!(!thread.is_finished(), "server thread exited during startup");
            std::thread::sleep(Duration::from_millis(10));
        }
        UnixStream::connect(&sock).expect("server socket never came up");
        TestServer {
            dir,
            sock,
            export,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `nbd+unix:///NAME?socket=SOCK`.
    pub fn uri(&self) -> String {
        self.uri_for(EXPORT)
    }

    pub fn uri_for(&self, name: &str) -> String {
        format!("nbd+unix:///{}?socket={}", name, self.sock.display())
    }

    /// Shut down and check `serve` returned Ok and removed its socket.
    pub fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked");
        r.expect("serve returned an error");
        assert!(!self.sock.exists(), "socket file not removed on shutdown");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Absolute path of an external tool; panics with an install hint when it is missing, so a
/// machine without the tools fails loudly instead of passing silently.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"];
    for d in dirs.iter().copied().chain(path.split(':')) {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required tool `{name}` not found; install it (Debian: apt-get install libnbd-bin \
         python3-libnbd qemu-utils nbd-client nbdkit)"
    );
}

/// The system python (has the `nbd` module; a pyenv python on PATH may not).
pub fn python() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3");
    assert!(
        p.is_file(),
        "/usr/bin/python3 not found (needed for nbdsh and the probe)"
    );
    p
}

/// Run a command with a timeout-free wait; returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

/// Run and require exit status 0; returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- raw client ----

pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REQ_MAGIC: u32 = 0x2560_9513;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_FLAG_FUA: u16 = 1;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// A blocking raw-socket NBD client for malformed traffic, over a Unix socket or (after
/// STARTTLS) a TLS stream on top of one.
pub struct Raw<S = UnixStream> {
    pub s: S,
}

impl Raw<UnixStream> {
    /// Connect, read the 18-byte greeting, send `cflags`.
    pub fn connect(sock: &Path, cflags: u32) -> Raw {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]),
            3,
            "FIXED_NEWSTYLE|NO_ZEROES"
        );
        s.write_all(&cflags.to_be_bytes()).unwrap();
        Raw { s }
    }

    /// Like [`Raw::connect`], but a connection the server closes before the greeting (as it
    /// does over `--max-connections`) is retried until one is greeted, for up to 10 s: the
    /// server frees a closed connection's slot asynchronously.
    pub fn connect_when_admitted(sock: &Path, cflags: u32) -> Raw {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = UnixStream::connect(sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut g = [0u8; 18];
            if s.read_exact(&mut g).is_ok() {
                assert_eq!(&g[0..16], b"NBDMAGICIHAVEOPT");
                s.write_all(&cflags.to_be_bytes()).unwrap();
                return Raw { s };
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no connection admitted within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connect and read the greeting: `true` if greeted, `false` if the server closed the
    /// connection instead (EOF or reset).
    pub fn greeted(sock: &Path) -> bool {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = [0u8; 18];
        match s.read_exact(&mut g) {
            Ok(()) => {
                assert_eq!(&g[..8], b"NBDMAGIC");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("neither greeting nor close: {e}"),
        }
    }

    /// Negotiate with NBD_OPT_GO on [`EXPORT`]; returns (size, transmission flags).
    pub fn go(sock: &Path) -> (Raw, u64, u16) {
        let mut r = Raw::connect(sock, 3);
        let (size, flags) = r.go_export();
        (r, size, flags)
    }

    /// Negotiate structured replies (and `base:allocation` if `meta`), then GO; returns the
    /// connection and the transmission flags.
    pub fn go_structured(sock: &Path, meta: bool) -> (Raw, u16) {
        let mut r = Raw::connect(sock, 3);
        let flags = r.go_structured_here(meta);
        (r, flags)
    }
}

impl<S: Read + Write> Raw<S> {
    pub fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// Read one option reply: (option, reply type, data).
    pub fn opt_reply(&mut self) -> std::io::Result<(u32, u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h)?;
        assert_eq!(
            u64::from_be_bytes(h[0..8].try_into().unwrap()),
            OPT_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let rt = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        self.s.read_exact(&mut d)?;
        Ok((opt, rt, d))
    }

    /// NBD_OPT_GO on [`EXPORT`] on this connection; returns (size, transmission flags).
    pub fn go_export(&mut self) -> (u64, u16) {
        let mut d = (EXPORT.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(EXPORT.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.send_opt(7, &d);
        let (mut size, mut flags) = (0, 0);
        loop {
            let (_, rt, data) = self.opt_reply().unwrap();
            if rt == 3 && data[0..2] == [0, 0] {
                size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                flags = u16::from_be_bytes([data[10], data[11]]);
            } else if rt == 1 {
                return (size, flags);
            } else {
                panic!("unexpected GO reply type {rt:#x}");
            }
        }
    }

    pub fn request(&mut self, flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) {
        self.try_request(flags, cmd, cookie, offset, len, &[])
            .unwrap();
    }

    /// Send a request header with `payload` after it (len is the request's length field);
    /// an error (the server is gone) is returned, not a panic.
    pub fn try_request(
        &mut self,
        flags: u16,
        cmd: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut b = REQ_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b)
    }

    /// Read a simple reply header: (error, cookie).
    pub fn reply(&mut self) -> std::io::Result<(u32, u64)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        assert_eq!(
            u32::from_be_bytes(h[0..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        Ok((
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        ))
    }

    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        self.request(0, CMD_WRITE, cookie, offset, data.len() as u32);
        self.s.write_all(data).unwrap();
    }

    /// READ and return the data (panics on error).
    pub fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, CMD_READ, 99, offset, len);
        let (err, cookie) = self.reply().unwrap();
        assert_eq!((err, cookie), (0, 99));
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        d
    }

    /// True when the server has closed the connection (EOF or reset within the read timeout);
    /// false if data arrives or the connection stays open until the timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// A fresh GO + 4 KiB write/read round trip, to show the server still serves.
pub fn assert_serving(sock: &Path) {
    let (mut r, size, _) = Raw::go(sock);
    r.round_trip(size);
    r.request(0, CMD_DISC, 0, 0, 0);
}

impl<S: Read + Write> Raw<S> {
    /// In transmission with simple replies: write 4 KiB at the end of an export of `size`
    /// bytes and read it back.
    pub fn round_trip(&mut self, size: u64) {
        assert!(size >= 4096);
        let pat: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        self.write(5, size - 4096, &pat);
        assert_eq!(self.reply().unwrap(), (0, 5));
        assert_eq!(self.read(size - 4096, 4096), pat);
    }
}

// ---- structured replies (proto.md "Structured reply chunk message") ----

pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const OPT_GO: u32 = 7;
pub const OPT_INFO: u32 = 6;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const ENOTSUP: u32 = 95;
pub const TFLAG_SEND_DF: u16 = 1 << 7;

/// One structured reply chunk: flags, type, cookie, payload.
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub rtype: u16,
    pub cookie: u64,
    pub payload: Vec<u8>,
}

impl Chunk {
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }

    /// For an ERROR chunk: (error, message), checking the message length fits the payload.
    pub fn error(&self) -> (u32, String) {
        assert_eq!(self.rtype, REPLY_TYPE_ERROR, "{self:?}");
        assert!(self.payload.len() >= 6);
        let err = u32::from_be_bytes(self.payload[0..4].try_into().unwrap());
        let n = u16::from_be_bytes([self.payload[4], self.payload[5]]) as usize;
        assert_eq!(6 + n, self.payload.len(), "message length vs chunk length");
        (err, String::from_utf8(self.payload[6..].to_vec()).unwrap())
    }
}

/// Option data for INFO/GO/LIST_META_CONTEXT-style requests.
pub fn name_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

/// Option data of LIST/SET_META_CONTEXT: name, then the queries.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = name_data(name);
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

impl<S: Read + Write> Raw<S> {
    /// Send an option and collect its replies up to the final one (ACK or error).
    pub fn opt_all(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send_opt(opt, data);
        let mut out = Vec::new();
        loop {
            let (o, rt, d) = self.opt_reply().unwrap();
            assert_eq!(o, opt);
            out.push((rt, d));
            if rt == REP_ACK || rt & (1 << 31) != 0 {
                return out;
            }
        }
    }

    /// INFO or GO on [`EXPORT`]; returns (final reply type, transmission flags if sent).
    pub fn info_or_go(&mut self, opt: u32) -> (u32, Option<u16>) {
        let mut d = name_data(EXPORT);
        d.extend_from_slice(&0u16.to_be_bytes());
        let replies = self.opt_all(opt, &d);
        let flags = replies
            .iter()
            .find(|(rt, d)| *rt == REP_INFO && d[0..2] == [0, 0])
            .map(|(_, d)| u16::from_be_bytes([d[10], d[11]]));
        (replies.last().unwrap().0, flags)
    }

    /// On this connection: negotiate structured replies (and `base:allocation` if `meta`),
    /// then GO; returns the transmission flags.
    pub fn go_structured_here(&mut self, meta: bool) -> u16 {
        let r = self;
        assert_eq!(
            r.opt_all(OPT_STRUCTURED_REPLY, &[]),
            vec![(REP_ACK, vec![])]
        );
        if meta {
            let rep = r.opt_all(
                OPT_SET_META_CONTEXT,
                &meta_data(EXPORT, &["base:allocation"]),
            );
            assert_eq!(rep.len(), 2, "{rep:?}");
            assert_eq!(rep[0].0, REP_META_CONTEXT);
            assert_eq!(&rep[0].1[4..], b"base:allocation");
        }
        let (rt, flags) = r.info_or_go(OPT_GO);
        assert_eq!(rt, REP_ACK);
        flags.unwrap()
    }

    /// Read one structured reply chunk.
    pub fn chunk(&mut self) -> std::io::Result<Chunk> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h)?;
        assert_eq!(
            u32::from_be_bytes(h[0..4].try_into().unwrap()),
            STRUCTURED_REPLY_MAGIC,
            "expected a structured reply chunk"
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload)?;
        Ok(Chunk {
            flags: u16::from_be_bytes([h[4], h[5]]),
            rtype: u16::from_be_bytes([h[6], h[7]]),
            cookie: u64::from_be_bytes(h[8..16].try_into().unwrap()),
            payload,
        })
    }

    /// Read chunks up to and including the one with DONE.
    pub fn structured_reply(&mut self) -> Vec<Chunk> {
        let mut v = Vec::new();
        loop {
            let c = self.chunk().unwrap();
            let done = c.done();
            v.push(c);
            if done {
                return v;
            }
        }
    }
}
