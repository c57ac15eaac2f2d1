//! The volume's byte-granular data path against a plain in-memory model: random writes, zero
//! writes and reads of any length at any offset (so most touch partial sectors and go through
//! read-modify-write), at sector sizes 512 and 4096, single-threaded and from several threads
//! writing interleaved byte ranges of the same sectors; then a reopen reads the same bytes.

mod common;

use std::path::Path;
use std::sync::Arc;

use nbdcrypt::volume::{self, Access, FormatOptions, KdfChoice, KdfKind, Volume};

fn create(path: &Path, sector_size: u32) {
    let opts = FormatOptions {
        size: Some(18 << 20),
        sector_size,
        kdf: KdfChoice {
            kind: KdfKind::Pbkdf2,
            force_iterations: Some(1000),
            ..KdfChoice::default()
        },
        label: None,
    };
    volume::format(path, &opts, common::PASS).unwrap();
}

fn open(path: &Path) -> Volume {
    let file = volume::open_image(path, Access::WriteExclusive).unwrap();
    let lh = volume::load_header(&file, path).unwrap();
    let key = volume::unlock(&file, path, &lh, common::PASS, None, None).unwrap();
    Volume::new(file, path, &lh, key, false).unwrap()
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m
    }
}

#[test]
fn random_byte_ranges_match_a_model() {
    let dir = common::tempdir();
    for sector in [512u32, 4096] {
        let path = dir.path().join(format!("m{sector}.img"));
        create(&path, sector);
        let n = 256 << 10;
        let mut model = vec![0u8; n];
        {
            let vol = open(&path);
            assert_eq!(vol.sector_size(), sector);
            vol.write_zeroes(0, n as u64, false).unwrap();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ sector as u64);
            for i in 0..4000usize {
                let off = rng.below(n as u64) as usize;
                let len = (rng.below(9000) as usize).min(n - off);
                if rng.below(4) == 0 {
                    vol.write_zeroes(off as u64, len as u64, false).unwrap();
                    model[off..off + len].fill(0);
                } else {
                    let data: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7 + 1) as u8).collect();
                    vol.write_at(&data, off as u64, i % 97 == 0).unwrap();
                    model[off..off + len].copy_from_slice(&data);
                }
                let ro = rng.below(n as u64) as usize;
                let rl = (rng.below(9000) as usize).min(n - ro);
                let mut b = vec![0u8; rl];
                vol.read_at(&mut b, ro as u64).unwrap();
                assert!(
                    b == model[ro..ro + rl],
                    "op {i}, sector {sector}: read [{ro}, +{rl})"
                );
            }
            vol.flush().unwrap();
        }
        let vol = open(&path);
        let mut all = vec![0u8; n];
        vol.read_at(&mut all, 0).unwrap();
        assert!(all == model, "after reopen, sector {sector}");
        // Out-of-range requests are refused, not wrapped.
        let mut b = [0u8; 2];
        assert!(vol.read_at(&mut b, vol.size() - 1).is_err());
        assert!(vol.write_at(&b, u64::MAX, false).is_err());
    }
}

/// Four threads write interleaved 100-byte pieces, so every 4096-byte sector is rewritten by
/// all of them concurrently, each a read-modify-write; no piece may be lost.
#[test]
fn concurrent_byte_granular_writes_lose_nothing() {
    let dir = common::tempdir();
    let path = dir.path().join("c.img");
    create(&path, 4096);
    let vol = Arc::new(open(&path));
    const PIECE: usize = 100;
    const PIECES: usize = 4000;
    const THREADS: usize = 4;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let vol = vol.clone();
            std::thread::spawn(move || {
                for p in (t..PIECES).step_by(THREADS) {
                    let data = vec![(p % 251 + 1) as u8; PIECE];
                    vol.write_at(&data, (p * PIECE) as u64, false).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut all = vec![0u8; PIECE * PIECES];
    vol.read_at(&mut all, 0).unwrap();
    let lost: Vec<usize> = (0..PIECES)
        .filter(|&p| all[p * PIECE..(p + 1) * PIECE] != vec![(p % 251 + 1) as u8; PIECE][..])
        .collect();
    assert!(
        lost.is_empty(),
        "lost pieces: {:?}",
        &lost[..lost.len().min(10)]
    );
}

/// `write_at_unless` / `write_zeroes_unless` with the flag set write nothing and say so; with
/// it clear they behave as `write_at` / `write_zeroes` (the NBD session's abandoned-connection
/// check, made under the sector locks).
#[test]
fn abandoned_writes_leave_the_volume_untouched() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.img");
    create(&path, 4096);
    let vol = open(&path);
    let (set, clear) = (AtomicBool::new(true), AtomicBool::new(false));
    vol.write_at(&[1u8; 10_000], 100, false).unwrap();
    let mut before = vec![0u8; 12_000];
    vol.read_at(&mut before, 0).unwrap();
    assert!(!vol
        .write_at_unless(&[2u8; 10_000], 100, true, Some(&set))
        .unwrap());
    assert!(!vol
        .write_zeroes_unless(0, 1536 << 10, true, Some(&set))
        .unwrap());
    let mut after = vec![0u8; 12_000];
    vol.read_at(&mut after, 0).unwrap();
    assert!(after == before, "an abandoned write changed the volume");
    assert!(vol
        .write_at_unless(&[3u8; 5], 7, false, Some(&clear))
        .unwrap());
    assert!(vol
        .write_zeroes_unless(200, 50, false, Some(&clear))
        .unwrap());
    vol.read_at(&mut after, 0).unwrap();
    before[7..12].fill(3);
    before[200..250].fill(0);
    assert!(
        after == before,
        "a live write did not land as write_at would"
    );
}
