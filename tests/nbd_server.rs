//! Listener behaviour of `serve()`: TCP and Unix together, typed binding errors naming the
//! address, stale-socket replacement, non-socket files left alone; plus a session driven over
//! `tokio::io::duplex`.

mod common {
    pub mod nbd;
}

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::nbd::*;
use nbdcrypt::nbd::{
    run_session, serve, BlockExport, ExportConfig, Listen, NbdError, SessionEnd, TlsConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> ExportConfig {
    ExportConfig {
        name: EXPORT.into(),
        description: None,
        read_only: false,
    }
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
                export,
                config(),
                TlsConfig::off(),
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
        rt().block_on(serve(listen, exp, config(), TlsConfig::off(), async {
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
            export,
            config(),
            TlsConfig::off(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_over_duplex() {
    let export = MemExport::new(MIB, 512);
    let exp: Arc<dyn BlockExport> = export.clone();
    let (client, server) = tokio::io::duplex(64 << 10);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let session = tokio::spawn(run_session(
        server,
        exp,
        Arc::new(config()),
        TlsConfig::off(),
        stop_rx,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut g = [0u8; 18];
    rd.read_exact(&mut g).await.unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    wr.write_all(&3u32.to_be_bytes()).await.unwrap();
    opt(&mut wr, 1, EXPORT.as_bytes()).await; // EXPORT_NAME with NO_ZEROES: 10 bytes
    let mut r = [0u8; 10];
    rd.read_exact(&mut r).await.unwrap();
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
}

#[tokio::test]
async fn session_shutdown_and_abort() {
    let export: Arc<dyn BlockExport> = MemExport::new(MIB, 512);
    // shutdown while in transmission
    let (client, server) = tokio::io::duplex(4096);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let session = tokio::spawn(run_session(
        server,
        export.clone(),
        Arc::new(config()),
        TlsConfig::off(),
        stop_rx,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut g = [0u8; 18];
    rd.read_exact(&mut g).await.unwrap();
    wr.write_all(&3u32.to_be_bytes()).await.unwrap();
    opt(&mut wr, 1, b"").await;
    let mut r = [0u8; 10];
    rd.read_exact(&mut r).await.unwrap();
    stop_tx.send(true).unwrap();
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Shutdown);
    // ABORT: ACK then the session ends
    let (client, server) = tokio::io::duplex(4096);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let session = tokio::spawn(run_session(
        server,
        export.clone(),
        Arc::new(config()),
        TlsConfig::off(),
        stop_rx,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    rd.read_exact(&mut g).await.unwrap();
    wr.write_all(&3u32.to_be_bytes()).await.unwrap();
    opt(&mut wr, 2, b"").await;
    let mut ack = [0u8; 20];
    rd.read_exact(&mut ack).await.unwrap();
    assert_eq!(u32::from_be_bytes(ack[12..16].try_into().unwrap()), 1);
    assert_eq!(session.await.unwrap().unwrap(), SessionEnd::Aborted);
}
