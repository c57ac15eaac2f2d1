//! Resource bounds of the real `nbdcrypt open` under hostile clients: the server-wide buffer
//! budget (`--max-buffered`) against clients that send large READs and never read the
//! replies; handshake slots (`--max-handshakes`) apart from established ones
//! (`--max-connections`) against stalled sockets, with TLS client certificates; and the idle
//! limit (`--idle-limit`) against idle clients holding every established slot.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use common::nbd::{Raw, CMD_READ, CMD_WRITE, EXPORT, OPT_GO, REP_ACK};
use common::tls::Pki;
use common::{format_cheap, key_file, pattern, tempdir, Server};

const MIB: u64 = 1 << 20;

/// A formatted volume named [`EXPORT`] in `dir` (sparse: only the header is written) with
/// `size` of data, and its key file.
fn volume(dir: &Path, size: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = key_file(dir);
    let img = dir.join(format!("{EXPORT}.img"));
    format_cheap(&img, &key, size, 4096, "pbkdf2");
    (img, key)
}

/// `VmRSS` of process `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Write `data` at `offset` and read it back with simple replies; an error if the server is
/// gone or refuses (no panic, so callers can retry).
fn try_round_trip<S: Read + Write>(
    r: &mut Raw<S>,
    offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    let len = data.len() as u32;
    r.try_request(0, common::nbd::CMD_WRITE, 1, offset, len, data)?;
    let (err, cookie) = r.reply()?;
    if (err, cookie) != (0, 1) {
        return Err(std::io::Error::other(format!("WRITE: error {err}")));
    }
    r.try_request(0, CMD_READ, 2, offset, len, &[])?;
    let (err, cookie) = r.reply()?;
    if (err, cookie) != (0, 2) {
        return Err(std::io::Error::other(format!("READ: error {err}")));
    }
    let mut back = vec![0u8; data.len()];
    r.s.read_exact(&mut back)?;
    assert!(back == data, "read back what was written");
    Ok(())
}

#[test]
fn stalled_readers_stay_within_max_buffered_and_a_normal_client_is_served() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "80M"); // 64 MiB of data
    let srv = Server::start(&img, &key, &["--max-buffered", "128M"]);
    let pid = srv.child.as_ref().unwrap().id();
    let base = rss(pid);
    // The bound the README states: --max-buffered + 4 MiB per connection, plus the server's
    // own baseline and its fixed buffers (idle pool 16 MiB, stream buffers), with slack.
    const CLIENTS: u64 = 16;
    let bound = base + 128 * MIB + (CLIENTS + 1) * 4 * MIB + 48 * MIB;
    // 16 clients each send 64 READs of 32 MiB and never read a reply.
    let stalled: Vec<Raw> = (0..CLIENTS)
        .map(|i| {
            let (mut r, size, _) = Raw::go(&srv.socket);
            assert_eq!(size, 64 * MIB);
            for n in 0..64u64 {
                r.request(0, CMD_READ, i * 1000 + n, (n % 2) * 32 * MIB, 32 << 20);
            }
            r
        })
        .collect();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    // Meanwhile a normal client's 1 MiB writes and reads complete, with the right data.
    let started = Instant::now();
    let (mut normal, _, _) = Raw::go(&srv.socket);
    for i in 0..16u64 {
        let data = pattern(MIB as usize, i);
        try_round_trip(&mut normal, i * MIB, &data).expect("the normal client is served");
    }
    let served_in = started.elapsed();
    // Let the stalled load settle (or, without a server-wide budget, grow), watching RSS.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline && peak.load(Ordering::Relaxed) <= bound {
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "RSS: baseline {} MiB, peak {} MiB, bound {} MiB",
        base / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(
        peak <= bound,
        "server RSS peaked at {} MiB, over the bound of {} MiB (baseline {} MiB)",
        peak / MIB,
        bound / MIB,
        base / MIB
    );
    assert!(
        served_in < Duration::from_secs(20),
        "the normal client took {served_in:?}"
    );
    drop(stalled);
}

/// Keep `n` sockets connected to `sock` and silent, reopening each one the server closes,
/// until `stop`.
fn stalled_sockets(sock: &Path, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let sock = sock.to_owned();
    // None once the server is gone.
    let open = move || {
        let s = UnixStream::connect(&sock).ok()?;
        s.set_nonblocking(true).unwrap();
        Some(s)
    };
    let mut socks: Vec<UnixStream> = (0..n).map(|_| open().unwrap()).collect();
    std::thread::spawn(move || {
        let mut reopened = 0;
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            for s in socks.iter_mut() {
                // Read (and drop) the greeting; EOF or reset: the server closed it.
                let closed = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                if closed {
                    match open() {
                        Some(new) => *s = new,
                        None => return reopened,
                    }
                    reopened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        reopened
    })
}

#[test]
fn stalled_handshakes_do_not_keep_an_authenticated_client_out() {
    let dir = tempdir();
    let pki = Pki::new(dir.path());
    let (img, key) = volume(dir.path(), "24M");
    let (cert, tkey, ca) = (pki.cert("server"), pki.key("server"), pki.cert("ca"));
    let srv = Server::start(
        &img,
        &key,
        &[
            "--tls",
            "require",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tkey.to_str().unwrap(),
            "--tls-ca",
            ca.to_str().unwrap(),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let attack = stalled_sockets(&srv.socket, 200, stop.clone());
    std::thread::sleep(Duration::from_millis(500)); // the server has taken them all in
                                                    // A client with a valid certificate gets in and does I/O within 2 s.
    let started = Instant::now();
    let config = pki.client_config(Some("client"), false);
    let mut r = Raw::connect(&srv.socket, 3)
        .starttls(config)
        .expect("TLS with the client certificate");
    let (size, _) = r.go_export();
    try_round_trip(&mut r, size - 4096, &pattern(4096, 7)).expect("served");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    attack.join().unwrap();
    assert!(took < Duration::from_secs(2), "the client needed {took:?}");
}

#[test]
fn idle_clients_holding_every_slot_are_closed_by_the_idle_limit() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "24M");
    let srv = Server::start(&img, &key, &["--idle-limit", "1"]);
    // 110 clients try to finish the handshake and then send nothing: the first 100 take
    // every slot (the default --max-connections), the GO of the others is refused.
    let idle: Vec<Raw> = (0..110)
        .map(|_| Raw::connect(&srv.socket, 3))
        .filter_map(|mut r| (r.info_or_go(OPT_GO).0 == REP_ACK).then_some(r))
        .collect();
    assert_eq!(idle.len(), 100, "the default --max-connections");
    // A client retrying gets a slot once the idle limit frees them, and is served.
    let started = Instant::now();
    loop {
        let mut r = Raw::connect(&srv.socket, 3);
        if r.info_or_go(OPT_GO).0 == REP_ACK {
            let size = 8 * MIB; // a 24M image: 8 MiB of data after the 16 MiB header
            try_round_trip(&mut r, size - MIB, &pattern(MIB as usize, 3)).expect("served");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no slot within the 1 s idle limit (+3 s)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the idle ones were closed.
    for mut r in idle {
        r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(r.closed(), "an idle client is closed");
    }
}

/// With `--idle-limit`, a client that stalls in the middle of a request (half a header, or a
/// WRITE header followed by a trickle that stops) is closed like an idle one, releasing its
/// slot and the WRITE payload's share of the buffer budget.
#[test]
fn clients_stalled_in_the_middle_of_a_request_are_closed_by_the_idle_limit() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "24M");
    let srv = Server::start(&img, &key, &["--idle-limit", "1"]);
    let stalled = |what: &str, bytes: &dyn Fn(&mut Raw)| {
        let mut r = Raw::connect(&srv.socket, 3);
        assert_eq!(r.info_or_go(OPT_GO).0, REP_ACK);
        bytes(&mut r);
        r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = Instant::now();
        assert!(r.closed(), "{what}: still open");
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{what}: {:?}",
            t0.elapsed()
        );
    };
    // 10 of a request header's 28 bytes.
    stalled("half a header", &|r| {
        r.s.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1, 0, 0])
            .unwrap()
    });
    // A 4 MiB WRITE with 100 bytes of its payload.
    stalled("a WRITE payload that stops", &|r| {
        r.try_request(0, CMD_WRITE, 7, 0, 4 << 20, &[0u8; 100])
            .unwrap()
    });
}
