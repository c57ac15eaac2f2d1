//! The volume's byte-granular data path against a plain in-memory model: random writes, zero
//! writes and reads of any length at any offset (so most touch partial sectors and go through
//! read-modify-write), at sector sizes 512 and 4096, single-threaded and from several threads
//! writing interleaved byte ranges of the same sectors; then a reopen reads the same bytes.
//! With discard passdown, TRIMs join the mix: the model punches the aligned blocks, and the
//! volume's reads and allocation map must agree with it.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use nbdcrypt_luks2::volume::{self, Access, Discard, FormatOptions, KdfChoice, KdfKind, Volume};

fn create(path: &Path, sector_size: u32) {
    create_sized(path, sector_size, 18 << 20);
}

/// A fresh image of `size` bytes (the volume is 16 MiB smaller).
fn create_sized(path: &Path, sector_size: u32, size: u64) {
    let opts = FormatOptions {
        size: Some(size),
        sector_size,
        kdf: KdfChoice {
            kind: KdfKind::Pbkdf2,
            force_iterations: Some(1000),
            ..KdfChoice::default()
        },
        label: None,
        header: None,
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

/// Writes of whole sectors several MiB long (the volume encrypts them in pieces of at most
/// 1 MiB) at sector-aligned offsets that are not MiB-aligned, overlapping each other, with
/// lengths that are not multiples of a MiB: every byte lands where the model says, with either
/// discard policy (passdown takes whole 4096-byte units the same way), also after a reopen.
#[test]
fn multi_mib_whole_sector_writes_match_a_model() {
    let dir = common::tempdir();
    for (sector, discard) in [
        (512u32, Discard::Ignore),
        (4096, Discard::Ignore),
        (512, Discard::Passdown),
    ] {
        let path = dir.path().join(format!("w{sector}{discard:?}.img"));
        let n = 12 << 20;
        create_sized(&path, sector, (16 << 20) + n as u64);
        let mut model = vec![0u8; n];
        {
            let vol = open(&path).with_discard(discard);
            vol.write_zeroes(0, n as u64, false).unwrap();
            // The write unit: a sector, or with passdown the punch granularity.
            let unit = match discard {
                Discard::Ignore => sector as usize,
                Discard::Passdown => vol.punch_granularity() as usize,
            };
            for (i, (off, len)) in [
                (unit, (3 << 20) + 5 * unit),
                ((2 << 20) - 3 * unit, (5 << 20) + unit),
                (0, n),
                ((7 << 20) + 9 * unit, (4 << 20) + 2 * unit),
                ((1 << 20) + unit, 1 << 20),
            ]
            .into_iter()
            .enumerate()
            {
                let data: Vec<u8> = (0..len).map(|j| (j / 509 + j * 13 + i) as u8).collect();
                vol.write_at(&data, off as u64, false).unwrap();
                model[off..off + len].copy_from_slice(&data);
                let mut all = vec![0u8; n];
                vol.read_at(&mut all, 0).unwrap();
                let bad = all.iter().zip(&model).position(|(a, b)| a != b);
                assert_eq!(
                    bad, None,
                    "write {i} [{off}, +{len}), sector {sector}, {discard:?}"
                );
            }
        }
        let vol = open(&path);
        let mut all = vec![0u8; n];
        vol.read_at(&mut all, 0).unwrap();
        assert!(all == model, "after reopen, sector {sector}, {discard:?}");
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

/// Discard passdown against a model that also tracks which blocks of the image are holes:
/// TRIM punches the blocks (of the punch granularity) that lie wholly inside its range and
/// nothing else; any write touching a block makes the whole block data again (a partial write
/// into a hole fills the rest with encrypted zeroes); holes read as zeroes; `allocation`
/// reports exactly the model's holes, clipped to any query; a reopen sees the same.
#[test]
fn trims_with_passdown_match_a_model() {
    let dir = common::tempdir();
    for sector in [512u32, 4096] {
        let path = dir.path().join(format!("t{sector}.img"));
        create(&path, sector);
        let n = 256 << 10;
        let mut model = vec![0u8; n];
        let (g, blocks) = {
            let vol = open(&path).with_discard(Discard::Passdown);
            let g = vol.punch_granularity() as usize;
            let file = volume::open_image(&path, Access::Inspect).unwrap();
            let seg = volume::load_header(&file, &path).unwrap().segment.offset;
            assert_eq!(seg % g as u64, 0, "our data segment is block-aligned");
            // Start fully allocated: every block data.
            vol.write_zeroes(0, n as u64, false).unwrap();
            let mut hole = vec![false; n / g];
            let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ sector as u64);
            for i in 0..3000usize {
                let off = rng.below(n as u64) as usize;
                let len = (rng.below(40000) as usize).min(n - off);
                let touched = off / g..(off + len).div_ceil(g);
                match rng.below(5) {
                    0 | 1 => {
                        vol.trim(off as u64, len as u64, i % 50 == 0, None).unwrap();
                        for b in off.div_ceil(g)..(off + len) / g {
                            hole[b] = true;
                            model[b * g..(b + 1) * g].fill(0);
                        }
                    }
                    2 => {
                        vol.write_zeroes(off as u64, len as u64, false).unwrap();
                        model[off..off + len].fill(0);
                        if len > 0 {
                            hole[touched].fill(false);
                        }
                    }
                    _ => {
                        let len = len.min(9000);
                        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7 + 1) as u8).collect();
                        vol.write_at(&data, off as u64, false).unwrap();
                        model[off..off + len].copy_from_slice(&data);
                        if len > 0 {
                            hole[off / g..(off + len).div_ceil(g)].fill(false);
                        }
                    }
                }
                let ro = rng.below(n as u64) as usize;
                let rl = (rng.below(20000) as usize).min(n - ro);
                let mut b = vec![0u8; rl];
                vol.read_at(&mut b, ro as u64).unwrap();
                assert!(
                    b == model[ro..ro + rl],
                    "op {i}, sector {sector}: read [{ro}, +{rl})"
                );
                if rl > 0 {
                    assert_eq!(
                        runs(&vol, ro, rl),
                        expected_runs(&hole, g, ro, rl),
                        "op {i}, sector {sector}: allocation [{ro}, +{rl})"
                    );
                }
            }
            vol.flush().unwrap();
            (g, hole)
        };
        let vol = open(&path).with_discard(Discard::Passdown);
        let mut all = vec![0u8; n];
        vol.read_at(&mut all, 0).unwrap();
        assert!(all == model, "after reopen, sector {sector}");
        assert_eq!(runs(&vol, 0, n), expected_runs(&blocks, g, 0, n));
        assert!(blocks.contains(&true) && blocks.contains(&false));
        drop(vol);
        // With discard ignore the same image reports no holes and reads holes as noise.
        let vol = open(&path);
        assert_eq!(runs(&vol, 0, n), vec![(n as u64, false)]);
        let b = blocks.iter().position(|&h| h).unwrap();
        let mut noise = vec![0u8; g];
        vol.read_at(&mut noise, (b * g) as u64).unwrap();
        assert!(noise.iter().any(|&x| x != 0), "a hole decrypts to noise");
        drop(vol);
        // Read-only volumes refuse TRIM.
        let file = volume::open_image(&path, Access::ReadShared).unwrap();
        let lh = volume::load_header(&file, &path).unwrap();
        let key = volume::unlock(&file, &path, &lh, common::PASS, None, None).unwrap();
        let ro = Volume::new(file, &path, &lh, key, true)
            .unwrap()
            .with_discard(Discard::Passdown);
        assert!(ro.trim(0, g as u64, false, None).is_err());
    }
}

fn runs(vol: &Volume, off: usize, len: usize) -> Vec<(u64, bool)> {
    vol.allocation(off as u64, len as u64)
        .unwrap()
        .into_iter()
        .map(|r| (r.length, r.hole))
        .collect()
}

/// The model's runs over `[off, off+len)`: per block hole or data, equal neighbours merged.
fn expected_runs(hole: &[bool], g: usize, off: usize, len: usize) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = Vec::new();
    for p in off..off + len {
        let h = hole[p / g];
        match out.last_mut() {
            Some(last) if last.1 == h => last.0 += 1,
            _ => out.push((1, h)),
        }
    }
    out
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
    let vol = open(&path).with_discard(Discard::Passdown);
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
    let holes = |v: &Volume| -> Vec<(u64, bool)> {
        v.allocation(0, 1 << 20)
            .unwrap()
            .iter()
            .map(|r| (r.length, r.hole))
            .collect()
    };
    let alloc = holes(&vol);
    vol.trim(0, 1 << 20, false, Some(&set)).unwrap();
    assert_eq!(holes(&vol), alloc, "an abandoned trim punched a hole");
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

/// With discard passdown, a partial write into a punched block rewrites the whole block
/// (encrypted zeroes around the data), so two threads writing different 512-byte sectors of
/// the same punched block at once must still both land: the whole block is locked, not just
/// the written sector. Many rounds of trim, then both threads racing over 64 blocks.
#[test]
fn partial_writes_into_one_hole_from_two_threads_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.img");
    create(&path, 512);
    let vol = open(&path).with_discard(Discard::Passdown);
    let g = vol.punch_granularity();
    assert_eq!(g, 4096, "this test assumes 4096-byte punch blocks");
    let blocks = 64u64;
    let mut lost = 0;
    for _ in 0..100 {
        vol.trim(0, blocks * g, false, None).unwrap();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for (byte, at) in [(0x11u8, 0u64), (0x22, g - 512)] {
                let (vol, start) = (&vol, &start);
                s.spawn(move || {
                    start.wait();
                    for b in 0..blocks {
                        vol.write_at(&[byte; 512], b * g + at, false).unwrap();
                    }
                });
            }
        });
        let mut got = vec![0u8; (blocks * g) as usize];
        vol.read_at(&mut got, 0).unwrap();
        for b in got.chunks(g as usize) {
            if b[..512] != [0x11; 512] || b[(g - 512) as usize..] != [0x22; 512] {
                lost += 1;
            }
        }
    }
    assert_eq!(lost, 0, "blocks that lost one of the two writes");
}

/// `write_in_place_unless` (the NBD session's WRITE path): a whole-sector write leaves the
/// payload buffer holding exactly the ciphertext now in the image at that place, and reads
/// back as the plaintext, across the 1 MiB parallel split; a partial-sector write through it
/// is read-modify-written as `write_at`'s; with the abandoned flag set it writes nothing.
#[test]
fn in_place_writes_match_the_model_and_leave_ciphertext_behind() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicBool;
    let dir = common::tempdir();
    for sector in [512u32, 4096] {
        let path = dir.path().join(format!("p{sector}.img"));
        create_sized(&path, sector, 24 << 20);
        let vol = open(&path);
        let segment = volume::load_header(&std::fs::File::open(&path).unwrap(), &path)
            .unwrap()
            .segment
            .offset;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(sector));
        let plain: Vec<u8> = (0..(3 << 20) + 8192)
            .map(|_| rng.below(256) as u8)
            .collect();
        let (off, clear, set) = (
            u64::from(sector) * 5,
            AtomicBool::new(false),
            AtomicBool::new(true),
        );
        let mut buf = plain.clone();
        assert!(vol
            .write_in_place_unless(&mut buf, off, false, Some(&clear))
            .unwrap());
        let mut image = vec![0u8; buf.len()];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut image, segment + off)
            .unwrap();
        assert!(
            buf == image,
            "the buffer is not the ciphertext written ({sector})"
        );
        assert!(buf != plain, "nothing was encrypted ({sector})");
        let mut back = vec![0u8; plain.len()];
        vol.read_at(&mut back, off).unwrap();
        assert!(
            back == plain,
            "in-place write does not read back ({sector})"
        );
        // Partial sectors at both ends: the plaintext around them survives.
        let mut part = vec![0xa5u8; 1000];
        assert!(vol
            .write_in_place_unless(&mut part, off + 300, false, Some(&clear))
            .unwrap());
        let mut expect = plain.clone();
        expect[300..1300].fill(0xa5);
        vol.read_at(&mut back, off).unwrap();
        assert!(back == expect, "partial in-place write ({sector})");
        let mut doomed = vec![0x11u8; plain.len()];
        assert!(!vol
            .write_in_place_unless(&mut doomed, off, false, Some(&set))
            .unwrap());
        vol.read_at(&mut back, off).unwrap();
        assert!(
            back == expect,
            "an abandoned in-place write changed the volume ({sector})"
        );
    }
}
