//! Discard policy through the real binary and real clients: `open --discard passdown` punches
//! the 4096-byte aligned part of a TRIM and nothing else (checked on the image file with
//! SEEK_HOLE, its block count and its bytes), punched ranges read as zeroes (libnbd, nbdcopy)
//! and are holes for `nbdinfo --map` and `qemu-img map`; cryptsetup still opens the image and
//! its volume key decrypts every untouched sector; a written sector whose ciphertext is all
//! zeroes is decrypted, not taken for a hole; TRIMs and writes from two connections lose no
//! acknowledged write; `dump` and `--help` carry cryptsetup's warning. (The "ignore" policy
//! leaving the image unchanged is `serve_clients::multi_conn_copy_block_status_and_no_op_trim_on_a_volume`.)

use crate::common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Data segment offset of the volumes `nbdcrypt format` makes.
const SEG: u64 = 16 << 20;
const MIB: u64 = 1 << 20;

fn volume(dir: &Path, name: &str, sector: u32) -> (PathBuf, PathBuf) {
    let key = key_file(dir);
    let img = dir.join(name);
    format_cheap(&img, &key, "20M", sector, "pbkdf2");
    (img, key)
}

/// Fill the whole 4 MiB volume with `data` through the export (discard ignore), so the data
/// segment has no holes.
fn fill(img: &Path, key: &Path, data: &[u8]) {
    let src = img.with_extension("src");
    std::fs::write(&src, data).unwrap();
    let mut srv = Server::start(img, key, &[]);
    ok(nbd_tool("nbdcopy").args(["--flush", src.to_str().unwrap(), &srv.uri()]));
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    assert_eq!(holes_in(img, SEG, SEG + data.len() as u64), vec![]);
}

/// Holes of a file within `[from, to)`, from SEEK_DATA/SEEK_HOLE (independent of nbdcrypt).
fn holes_in(img: &Path, from: u64, to: u64) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(img).unwrap();
    let seek = |pos: u64, whence| {
        let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
        if r < 0 {
            to
        } else {
            (r as u64).min(to)
        }
    };
    let (mut out, mut pos) = (Vec::new(), from);
    while pos < to {
        let data = seek(pos, libc::SEEK_DATA);
        if data > pos {
            out.push((pos, data));
        }
        if data >= to {
            break;
        }
        pos = seek(data, libc::SEEK_HOLE);
    }
    out
}

fn py(script: &str, args: &[&str]) -> String {
    ok(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args))
}

/// Decrypt `n` bytes at volume offset `off` of `img` with the volume key `vk` (hex), by
/// independent AES-XTS.
fn decrypt(img: &Path, vk: &str, sector: u32, off: u64, n: u64) -> Vec<u8> {
    let out = img.with_extension(format!("dec{off}"));
    ok(xts_python().args([
        "decrypt",
        img.to_str().unwrap(),
        vk,
        &SEG.to_string(),
        &sector.to_string(),
        &off.to_string(),
        &format!("{}:{n}", out.display()),
    ]));
    std::fs::read(&out).unwrap()
}

const TRIM_PY: &str = r#"
import nbd, sys
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(sys.argv[1])
h.trim((2 << 20) - 100 - ((1 << 20) + 100), (1 << 20) + 100, nbd.CMD_FLAG_FUA)
h.trim(4000, (3 << 20) + 10)   # no whole aligned block inside: nothing punched
h.trim(4095, 1)                # [1, 4096): ends on a block boundary, starts after one
h.flush(); h.shutdown()
"#;

/// TRIM with passdown punches exactly the aligned blocks inside the range; everything else
/// keeps its ciphertext byte for byte; clients see zeroes and holes there and the data
/// everywhere else; cryptsetup still opens the image and decrypts the untouched sectors.
#[test]
fn passdown_trim_punches_only_aligned_blocks() {
    let dir = tempdir();
    let (hole_start, hole_end) = (MIB + 4096, 2 * MIB - 4096);
    for sector in [512u32, 4096] {
        let (img, key) = volume(dir.path(), &format!("p{sector}.img"), sector);
        let data = pattern(4 << 20, 100 + sector as u64);
        fill(&img, &key, &data);
        let before = std::fs::read(&img).unwrap();
        let blocks_before = std::fs::metadata(&img).unwrap().blocks();

        let mut srv = Server::start(&img, &key, &["--discard", "passdown"]);
        py(TRIM_PY, &[&srv.uri()]);
        let mut expected = data.clone();
        expected[hole_start as usize..hole_end as usize].fill(0);
        // Reads through libnbd's nbdcopy (which itself uses block status to skip holes).
        let out = dir.path().join(format!("out{sector}.bin"));
        ok(nbd_tool("nbdcopy").args([&srv.uri(), out.to_str().unwrap()]));
        assert!(
            std::fs::read(&out).unwrap() == expected,
            "sector {sector}: reads after TRIM"
        );
        let got = py(
            "import nbd, sys\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
             d = h.pread(8192, int(sys.argv[2]))\nprint(d == bytes(8192))",
            &[&srv.uri(), &hole_start.to_string()],
        );
        assert_eq!(got.trim(), "True", "libnbd reads zeroes in the hole");
        // Structured reads: OFFSET_HOLE for the hole (zeroes), OFFSET_DATA around it; with DF
        // one OFFSET_DATA chunk. libnbd reports each chunk to the callback.
        let chunks = py(
            "import nbd, sys\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
             start, n = int(sys.argv[2]), int(sys.argv[3])\n\
             for flags in (0, nbd.CMD_FLAG_DF):\n\
             \x20   seen = []\n\
             \x20   def chunk(buf, off, status, err):\n\
             \x20       kind = 'hole' if status == nbd.READ_HOLE else 'data'\n\
             \x20       seen.append('%d %d %s %s' % (off, len(buf), kind, buf == bytes(len(buf))))\n\
             \x20       return 0\n\
             \x20   d = h.pread_structured(n, start, chunk, flags)\n\
             \x20   print(','.join(sorted(seen, key=lambda x: int(x.split()[0]))))\n",
            &[
                &srv.uri(),
                &(hole_start - 4096).to_string(),
                &(hole_end - hole_start + 8192).to_string(),
            ],
        );
        let lines: Vec<&str> = chunks.lines().collect();
        assert_eq!(
            lines,
            [
                format!(
                    "{} 4096 data False,{hole_start} {} hole True,{hole_end} 4096 data False",
                    hole_start - 4096,
                    hole_end - hole_start
                ),
                format!(
                    "{} {} data False",
                    hole_start - 4096,
                    hole_end - hole_start + 8192
                )
            ],
            "sector {sector}: chunks of a structured read across the hole"
        );
        // base:allocation: nbdinfo --map and qemu-img map.
        let map = ok(nbd_tool("nbdinfo").args(["--map", &srv.uri()]));
        let rows: Vec<Vec<String>> = map
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect();
        let want = [
            (0, hole_start, "0", "data"),
            (hole_start, hole_end - hole_start, "3", "hole,zero"),
            (hole_end, (4 * MIB) - hole_end, "0", "data"),
        ];
        assert_eq!(rows.len(), 3, "{map}");
        for (row, (start, len, ty, desc)) in rows.iter().zip(want) {
            assert_eq!(
                row,
                &[
                    start.to_string(),
                    len.to_string(),
                    ty.to_string(),
                    desc.to_string()
                ],
                "{map}"
            );
        }
        let qmap = ok(Command::new(require("qemu-img", "qemu-utils")).args([
            "map",
            "-f",
            "raw",
            "--output=json",
            &srv.uri(),
        ]));
        let q: serde_json::Value = serde_json::from_str(&qmap).unwrap();
        let hole = q
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["start"] == hole_start)
            .unwrap_or_else(|| panic!("no extent at {hole_start}: {qmap}"));
        assert_eq!(hole["length"], hole_end - hole_start, "{qmap}");
        assert_eq!(hole["zero"], true, "{qmap}");
        assert_eq!(hole["data"], false, "{qmap}");
        let (st, err) = srv.stop();
        assert!(st.success(), "{err}");

        // The image: one hole, exactly the aligned blocks; every other byte unchanged.
        let (a, b) = ((SEG + hole_start) as usize, (SEG + hole_end) as usize);
        assert_eq!(
            holes_in(&img, SEG, SEG + 4 * MIB),
            vec![(a as u64, b as u64)]
        );
        let after = std::fs::read(&img).unwrap();
        assert_eq!(after.len(), before.len(), "KEEP_SIZE");
        assert!(after[..a] == before[..a], "bytes before the hole changed");
        assert!(after[b..] == before[b..], "bytes after the hole changed");
        assert!(after[a..b].iter().all(|&x| x == 0));
        let freed = blocks_before.saturating_sub(std::fs::metadata(&img).unwrap().blocks()) * 512;
        // A punch that splits an extent may cost the filesystem an extent-tree block or two,
        // so allow 64 KiB of slack on a 1 MiB hole.
        assert!(
            freed + (64 << 10) >= hole_end - hole_start,
            "stat blocks: {freed} bytes freed"
        );

        // cryptsetup still opens it, and its volume key decrypts the untouched sectors.
        let cs = cryptsetup_test_passphrase(&img, &key);
        assert!(cs.status.success(), "{}", stderr(&cs));
        let vk = cryptsetup_volume_key(&img, &key);
        assert!(decrypt(&img, &vk, sector, 0, hole_start) == data[..hole_start as usize]);
        assert!(
            decrypt(&img, &vk, sector, hole_end, 4 * MIB - hole_end) == data[hole_end as usize..]
        );
    }
}

/// A sector whose ciphertext is all zeroes but allocated (written) is decrypted like any
/// other: only holes of the file read as zeroes, never guessed from the content. A
/// never-written sector of a sparse image is a hole: zeroes with passdown, decrypted noise
/// with ignore (as cryptsetup).
#[test]
fn written_all_zero_ciphertext_is_decrypted_not_a_hole() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "z.img", 4096);
    let read = r#"
import nbd, sys
h = nbd.NBD(); h.add_meta_context("base:allocation"); h.connect_uri(sys.argv[1])
if sys.argv[2] == "write":
    h.pwrite(b"\x5a" * 4096, 8192); h.flush()
got = []
h.block_status(4096 * 3, 8192, lambda ctx, off, e, err: got.append(list(e)) or 0)
print(h.pread(4096, 8192).hex(), h.pread(4096, 16384).hex(), got[0])
"#;
    let srv = Server::start(&img, &key, &["--discard", "passdown"]);
    let out = py(read, &[&srv.uri(), "write"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], "5a".repeat(4096));
    assert_eq!(f[1], "00".repeat(4096), "a hole reads as zeroes");
    drop(srv);

    // Overwrite the written sector's ciphertext with zeroes: allocated, not a hole.
    let at = SEG + 8192;
    let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    file.write_all_at(&[0u8; 4096], at).unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert!(holes_in(&img, at, at + 4096).is_empty());
    let vk = cryptsetup_volume_key(&img, &key);
    let xts_of_zeroes = decrypt(&img, &vk, 4096, 8192, 4096);
    assert!(xts_of_zeroes.iter().any(|&b| b != 0));
    let hex: String = xts_of_zeroes.iter().map(|b| format!("{b:02x}")).collect();

    let srv = Server::start(&img, &key, &["--discard", "passdown"]);
    let out = py(read, &[&srv.uri(), "read"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], hex, "passdown: XTS decryption of the zero ciphertext");
    assert!(
        out.contains("[4096, 0, 8192, 3]"),
        "data, then holes: {out}"
    );
    drop(srv);
    let srv = Server::start(&img, &key, &[]);
    let out = py(read, &[&srv.uri(), "read"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], hex, "ignore: the same decryption");
    assert_ne!(f[1], "00".repeat(4096), "ignore: a hole decrypts to noise");
    assert!(
        out.contains("[12288, 0]"),
        "ignore: everything is data: {out}"
    );
}

const RACE_PY: &str = r#"
import nbd, sys, threading
uri, N = sys.argv[1], 128      # N blocks of 8192 bytes: two 4096-byte punch blocks each
def conn():
    h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(uri); return h
A, B = conn(), conn()
def run(h, ops):
    cookies = []
    for op in ops:
        cookies.append(op(h))
        while h.aio_in_flight() > 16:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
def both(a_ops, b_ops):
    t = [threading.Thread(target=run, args=(A, a_ops)), threading.Thread(target=run, args=(B, b_ops))]
    [x.start() for x in t]; [x.join() for x in t]
v1 = lambda b: bytes([b % 250 + 1])
v2 = lambda b: bytes([b % 250 + 3])
# 1: A trims [b*8192+100, (b+1)*8192) (punches the second block only) while B writes the
#    first 100 bytes of each first block (read-modify-write of the sector the trim skips).
both([lambda h, b=b: h.aio_trim(8192 - 100, b * 8192 + 100) for b in range(N)],
     [lambda h, b=b: h.aio_pwrite(v1(b) * 100, b * 8192) for b in range(N)])
# 2: after those trims were acknowledged, B writes 512 bytes into each even second block
#    (a hole) while A punches the odd second blocks again.
both([lambda h, b=b: h.aio_trim(4096, b * 8192 + 4096) for b in range(1, N, 2)],
     [lambda h, b=b: h.aio_pwrite(v2(b) * 512, b * 8192 + 4096 + 1024) for b in range(0, N, 2)])
# 3: ping-pong across connections: a write acknowledged after a trim's reply survives it.
for i in range(50):
    off = (N * 8192) + (i % 4) * 65536
    A.trim(65536, off)
    B.pwrite(bytes([i + 1]) * 65536, off)
    assert A.pread(65536, off) == bytes([i + 1]) * 65536, i
# 4: writes to different sectors of one punched 4096-byte block from both connections at
#    once both survive (raced in process: model::partial_writes_into_one_hole_from_two_threads_both_land).
R, U = 2 * 1024 * 1024, 64
A.trim(U * 4096, R)
both([lambda h, u=u: h.aio_pwrite(b"\x11" * 512, R + u * 4096) for u in range(U)],
     [lambda h, u=u: h.aio_pwrite(b"\x22" * 512, R + u * 4096 + 3584) for u in range(U)])
got = A.pread(U * 4096, R)
unit = b"\x11" * 512 + bytes(3072) + b"\x22" * 512
lost = [u for u in range(U) if got[u * 4096:(u + 1) * 4096] != unit]
print("lost", len(lost), lost[:10])
d = A.pread(N * 8192, 0)
pat = open(sys.argv[2], "rb").read()
bad = []
for b in range(N):
    o = b * 8192
    want = v1(b) * 100 + pat[o + 100:o + 4096]
    if b % 2 == 0:
        want += bytes(1024) + v2(b) * 512 + bytes(4096 - 1536)
    else:
        want += bytes(4096)
    if d[o:o + 8192] != want:
        bad.append(b)
print("bad", len(bad), bad[:10])
"#;

/// TRIMs and writes from two connections at once, on the same sectors and blocks: writes to
/// the part a TRIM leaves alone survive, writes acknowledged after a TRIM's reply survive, a
/// partial write into a punched block reads back with zeroes around it.
#[test]
fn trims_and_writes_from_two_connections_lose_nothing() {
    let dir = tempdir();
    for sector in [512u32, 4096] {
        let (img, key) = volume(dir.path(), &format!("r{sector}.img"), sector);
        let data = pattern(4 << 20, 7 + sector as u64);
        fill(&img, &key, &data);
        let pat = dir.path().join("pattern.bin");
        std::fs::write(&pat, &data).unwrap();
        let srv = Server::start(&img, &key, &["--discard", "passdown"]);
        let out = py(RACE_PY, &[&srv.uri(), pat.to_str().unwrap()]);
        assert!(out.contains("bad 0 "), "sector {sector}: {out}");
        assert!(out.contains("lost 0 "), "sector {sector}: {out}");
    }
}

/// `dump` prints luksDump's text on stdout and, on stderr only, what the image leaks: holes in
/// the data segment (one line with its remedy, `nbdcrypt wipe`), the persistent
/// `allow-discards` flag with cryptsetup's warning (quoted only then).
/// `open --help` and `demo --help` carry the same warning.
#[test]
fn dump_and_help_warn_about_what_passdown_leaks() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "d.img", 512);
    let quote = "This command can have a negative security impact because it can make \
                 filesystem-level operations visible on the physical device. For example, \
                 information leaking filesystem type, used space, etc. may be extractable \
                 from the physical device if the discarded blocks can be located later. If in \
                 doubt, do not use it.";
    let dump = |img: &Path| {
        let out = run(nbdcrypt().arg("dump").arg(img));
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8(out.stdout.clone()).unwrap();
        let luks = ok(cryptsetup().arg("luksDump").arg(img));
        assert_eq!(stdout, luks, "stdout is luksDump's text");
        stderr(&out)
    };
    // A fresh sparse image: the never-written data segment is a hole.
    let err = dump(&img);
    assert!(
        err.contains(&format!("{} of the {} bytes", 4 * MIB, 4 * MIB)),
        "{err}"
    );
    assert!(err.contains("nbdcrypt wipe"), "the remedy is named: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains(quote), "no discards were enabled: {err}");
    // Fully written: nothing leaks, nothing said.
    fill(&img, &key, &pattern(4 << 20, 3));
    assert_eq!(dump(&img), "");
    // The persistent flag (cryptsetup --persistent --allow-discards) is named.
    edit_metadata(&img, |v| {
        v["config"]["flags"] = serde_json::json!(["allow-discards"]);
    });
    let err = dump(&img);
    assert!(err.contains("persistent flag allow-discards"), "{err}");
    assert!(err.contains(quote), "{err}");
    assert!(!err.contains("holes"), "{err}");
    // A TRIM with passdown makes a hole; dump counts it.
    edit_metadata(&img, |v| {
        v["config"].as_object_mut().unwrap().remove("flags");
    });
    let srv = Server::start(&img, &key, &["--discard", "passdown"]);
    py(
        "import nbd, sys\nh = nbd.NBD(); h.connect_uri(sys.argv[1]); h.trim(1 << 20, 0)",
        &[&srv.uri()],
    );
    drop(srv);
    let err = dump(&img);
    assert!(
        err.contains(&format!("{} of the {} bytes", MIB, 4 * MIB)),
        "{err}"
    );
    for cmd in ["open", "demo"] {
        let help = ok(nbdcrypt().args([cmd, "--help"]));
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("--discard <POLICY>"), "{help}");
        assert!(flat.contains(quote), "{cmd} --help: {help}");
    }
}
