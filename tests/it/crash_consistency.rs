//! Crash consistency of the data path: random writes with FLUSH and FUA through NBD
//! while the server is killed with SIGKILL at random points, over many rounds. After each
//! restart every write acknowledged before an acknowledged FLUSH, or acknowledged with FUA,
//! reads back exactly, and the header opens (the restart unlocks it).

use crate::common;

use common::nbd::{Raw, CMD_FLAG_FUA, CMD_FLUSH, CMD_WRITE};
use common::*;
use std::time::Duration;

/// xorshift64*: deterministic randomness from a seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test knows about the export: `known[i]` is `Some(byte)` when byte `i` must read back
/// as that value after a crash; `None` when it may hold any of the values written since (an
/// acknowledged write not yet covered by a FLUSH, or a write that was never acknowledged).
struct Model {
    known: Vec<Option<u8>>,
    /// Acknowledged writes (FUA or not) since the last acknowledged FLUSH, in order.
    pending: Vec<(usize, Vec<u8>)>,
}

impl Model {
    fn unsure(&mut self, off: usize, len: usize) {
        self.known[off..off + len].fill(None);
    }
    fn durable(&mut self, off: usize, data: &[u8]) {
        for (k, b) in self.known[off..off + data.len()].iter_mut().zip(data) {
            *k = Some(*b);
        }
    }
}

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged_as_durable() {
    const SIZE: usize = 2 << 20;
    const ROUNDS: usize = 24;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 0x9e37_79b9 + 1);
    eprintln!("crash_consistency: seed {seed} (CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("vol.img");
    format_cheap(&img, &key, "18M", 512, "pbkdf2");
    let mut model = Model {
        known: vec![None; SIZE], // a fresh image reads as noise until written
        pending: Vec::new(),
    };
    let (mut acked_writes, mut acked_flushes, mut killed_in_flight) = (0u64, 0u64, 0u64);
    for round in 0..ROUNDS {
        let mut srv = Server::start(&img, &key, &[]);
        let (mut r, size, _) = Raw::go(&srv.socket);
        assert_eq!(size as usize, SIZE);
        // Everything on disk after a restart is what the next crash must keep: flush it, read
        // it, check what must have survived, and adopt it as known.
        r.request(0, CMD_FLUSH, 1, 0, 0);
        assert_eq!(r.reply().unwrap(), (0, 1));
        let disk = r.read(0, SIZE as u32);
        for (i, (k, d)) in model.known.iter().zip(&disk).enumerate() {
            if let Some(k) = k {
                assert_eq!(
                    k, d,
                    "round {round}: byte {i} lost (seed {seed}); expected {k:#x}, read {d:#x}"
                );
            }
        }
        model.known = disk.into_iter().map(Some).collect();
        model.pending.clear();

        // SIGKILL at a random moment 5..80 ms from now, while requests keep coming.
        let pid = srv.child.as_ref().unwrap().id() as i32;
        let delay = Duration::from_millis(5 + rng.below(75));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut cookie = 10u64;
        loop {
            cookie += 1;
            if rng.below(8) == 0 {
                let sent = r.try_request(0, CMD_FLUSH, cookie, 0, 0, &[]);
                match sent.and_then(|()| r.reply()) {
                    Ok((0, c)) => {
                        assert_eq!(c, cookie);
                        acked_flushes += 1;
                        for (off, data) in std::mem::take(&mut model.pending) {
                            model.durable(off, &data);
                        }
                    }
                    Ok((e, _)) => panic!("FLUSH failed with {e}"),
                    Err(_) => break,
                }
                continue;
            }
            let len = 512 * (1 + rng.below(64) as usize);
            let off = 512 * rng.below(((SIZE - len) / 512) as u64) as usize;
            let fua = rng.below(4) == 0;
            let data = pattern(len, rng.next());
            // Until acknowledged, the write may or may not land.
            model.unsure(off, len);
            let flags = if fua { CMD_FLAG_FUA } else { 0 };
            let sent = r.try_request(flags, CMD_WRITE, cookie, off as u64, len as u32, &data);
            match sent.and_then(|()| r.reply()) {
                Ok((0, c)) => {
                    assert_eq!(c, cookie);
                    acked_writes += 1;
                    if fua {
                        model.durable(off, &data);
                    }
                    // Kept in order with the others: a FLUSH makes the latest one win.
                    model.pending.push((off, data));
                }
                Ok((e, _)) => panic!("WRITE failed with {e}"),
                Err(_) => {
                    killed_in_flight += 1;
                    break;
                }
            }
        }
        killer.join().unwrap();
        let (st, _) = srv.stop_with(libc::SIGKILL);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
    }
    // The header still opens and the last state is checked once more.
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut srv = Server::start(&img, &key, &[]);
    let (mut r, _, _) = Raw::go(&srv.socket);
    let disk = r.read(0, SIZE as u32);
    for (i, (k, d)) in model.known.iter().zip(&disk).enumerate() {
        if let Some(k) = k {
            assert_eq!(k, d, "final: byte {i} lost (seed {seed})");
        }
    }
    srv.stop();
    eprintln!(
        "crash_consistency: {ROUNDS} SIGKILL rounds, {acked_writes} acknowledged writes, \
         {acked_flushes} acknowledged flushes, {killed_in_flight} writes cut off by the kill"
    );
}
