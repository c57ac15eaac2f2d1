//! The server side of `open --connect` on the host, without the kernel: a session started in
//! the transmission phase ([`nbdcrypt::nbd::run_transmission`]) over a socket pair, driven by
//! a raw client that speaks as the Linux kernel does (no handshake, simple replies only).
//! The kernel itself is in the VM test (`vm-tests/run.sh`, phase 4).

use crate::common;

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::nbd::*;
use nbdcrypt::nbd::{run_transmission, BlockExport, SessionEnd, SessionStats};

const CMD_BLOCK_STATUS: u16 = 7;
const CMD_FLAG_FUA: u16 = 1;

/// A session on one end of a socket pair, run on its own runtime thread; the other end as a
/// raw client. Returns the client and the thread (its result: how the session ended).
fn start(
    export: Arc<MemExport>,
    read_only: bool,
    stats: Arc<SessionStats>,
) -> (
    Raw,
    std::thread::JoinHandle<Result<SessionEnd, String>>,
    tokio::sync::watch::Sender<bool>,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = tokio::net::UnixStream::from_std(ours).unwrap();
            let export: Arc<dyn BlockExport> = export;
            run_transmission(s, "kvol", export, read_only, stats, stop_rx, None)
                .await
                .map_err(|e| e.to_string())
        })
    });
    (Raw { s: theirs }, t, stop_tx)
}

/// Requests straight away (the first bytes back are a simple reply, not a greeting); writes,
/// FUA, reads, flush, bounds, a BLOCK_STATUS nothing negotiated (EINVAL), then DISC ends the
/// session as `Disconnected` after a final flush.
#[test]
fn transmission_without_a_handshake_as_the_kernel_speaks() {
    let export = MemExport::new(MIB, 4096);
    let stats = Arc::new(SessionStats::default());
    let (mut c, t, _stop) = start(export.clone(), false, stats.clone());
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    c.write(1, 8192, &data);
    assert_eq!(
        c.reply().unwrap(),
        (0, 1),
        "a simple reply, no greeting first"
    );
    c.request(CMD_FLAG_FUA, CMD_WRITE, 2, 0, 4096);
    std::io::Write::write_all(&mut c.s, &[0xab; 4096]).unwrap();
    assert_eq!(c.reply().unwrap(), (0, 2));
    assert_eq!(export.fua_writes.load(Ordering::SeqCst), 1);
    assert_eq!(c.read(8192, 8192), data);
    assert_eq!(export.snapshot(0, 4096), vec![0xab; 4096]);
    let flushes = export.flushes.load(Ordering::SeqCst);
    c.request(0, CMD_FLUSH, 3, 0, 0);
    assert_eq!(c.reply().unwrap(), (0, 3));
    assert_eq!(export.flushes.load(Ordering::SeqCst), flushes + 1);
    c.request(0, CMD_READ, 4, MIB as u64 - 4096, 8192);
    assert_eq!(c.reply().unwrap(), (EINVAL, 4), "past the end");
    c.request(0, CMD_BLOCK_STATUS, 5, 0, 4096);
    assert_eq!(
        c.reply().unwrap(),
        (EINVAL, 5),
        "no meta context negotiated"
    );
    c.request(0, CMD_DISC, 6, 0, 0);
    assert!(c.closed());
    assert_eq!(t.join().unwrap(), Ok(SessionEnd::Disconnected));
    assert_eq!(stats.export.get().map(String::as_str), Some("kvol"));
    assert!(
        export.flushes.load(Ordering::SeqCst) > flushes + 1,
        "flushed at DISC"
    );
}

/// A read-only device: writes get EPERM and change nothing; reads work.
#[test]
fn read_only_transmission_refuses_writes() {
    let export = MemExport::new(MIB, 512);
    let stats = Arc::new(SessionStats::default());
    let (mut c, t, _stop) = start(export.clone(), true, stats);
    c.write(1, 0, &[1; 512]);
    assert_eq!(c.reply().unwrap(), (EPERM, 1));
    assert_eq!(c.read(0, 512), vec![0; 512]);
    c.request(0, CMD_DISC, 2, 0, 0);
    assert!(c.closed());
    assert_eq!(t.join().unwrap(), Ok(SessionEnd::Disconnected));
}

/// The kernel closing its socket without DISC (a dead device) ends the session cleanly, and
/// so does the server's own stop signal.
#[test]
fn hang_up_and_shutdown_end_the_session() {
    let export = MemExport::new(MIB, 512);
    let (c, t, _stop) = start(export.clone(), false, Arc::new(SessionStats::default()));
    drop(c);
    assert_eq!(t.join().unwrap(), Ok(SessionEnd::ClientClosed));
    let (mut c, t, stop) = start(export, false, Arc::new(SessionStats::default()));
    assert_eq!(c.read(0, 512), vec![0; 512]);
    stop.send(true).unwrap();
    assert_eq!(t.join().unwrap(), Ok(SessionEnd::Shutdown));
    assert!(c.closed());
}
