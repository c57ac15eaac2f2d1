//! Keyslot lifecycle (`add-key`, `change-key`, `remove-key`, `kill-slot`): interop with real
//! cryptsetup both ways, crash safety by stopping the process after every write and sync step,
//! and refused operations that change no byte.
//!
//! Over 800 lines: each operation is tested three ways (interop, every crash stop, refusals)
//! around shared image fixtures; the keyslot-module tables of the volume crate test the same
//! operations without the CLI.

use crate::common;

use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHEAP: [&str; 4] = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

fn key(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("passphrase {name}")).unwrap();
    p
}

fn opens(img: &Path, key: &Path) -> bool {
    let ours = test_passphrase(img, key, &[]).status.code();
    let theirs = cryptsetup_test_passphrase(img, key).status.code();
    assert_eq!(
        ours,
        theirs,
        "nbdcrypt and cryptsetup disagree on {}",
        key.display()
    );
    assert!(matches!(ours, Some(0) | Some(2)), "{ours:?}");
    ours == Some(0)
}

fn cmd(args: &[&str], img: &Path, files: &[(&str, &Path)]) -> std::process::Output {
    let mut c = nbdcrypt();
    c.arg(args[0]).arg(img).args(&args[1..]);
    for (flag, f) in files {
        c.arg(flag).arg(f);
    }
    run(&mut c)
}

fn hash(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// The image left at one stop point, as its check sees it: its bytes, its `luksDump` (which
/// cryptsetup must parse), and whether a key opens it ([`opens`]: both tools, asked once per
/// key and stop point).
struct Stopped<'a> {
    img: &'a Path,
    bytes: Vec<u8>,
    dump: String,
    opened: std::cell::RefCell<Vec<(PathBuf, bool)>>,
}

impl Stopped<'_> {
    fn opens(&self, key: &Path) -> bool {
        if let Some((_, o)) = self.opened.borrow().iter().find(|(k, _)| k == key) {
            return *o;
        }
        let o = opens(self.img, key);
        self.opened.borrow_mut().push((key.to_owned(), o));
        o
    }

    /// Whether the header in force lists keyslot `n`.
    fn slot(&self, n: u32) -> bool {
        self.dump.contains(&format!("  {n}: luks2"))
    }
}

#[test]
fn our_changes_are_seen_by_cryptsetup() {
    let dir = tempdir();
    let (k0, k1, k2) = (
        key(dir.path(), "k0"),
        key(dir.path(), "k1"),
        key(dir.path(), "k2"),
    );
    let img = dir.path().join("v.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    let out = cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k1)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Key slot 1 created."));
    assert!(opens(&img, &k0) && opens(&img, &k1));
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert!(dump.contains("  1: luks2"), "{dump}");

    let mut change = vec!["change-key"];
    change.extend(CHEAP);
    let out = cmd(
        &change,
        &img,
        &[("--key-file", &k1), ("--new-keyfile", &k2)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!opens(&img, &k1) && opens(&img, &k2) && opens(&img, &k0));

    let out = cmd(&["kill-slot", "1"], &img, &[("--key-file", &k0)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!opens(&img, &k2) && opens(&img, &k0));
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert!(!dump.contains("  1: luks2"), "{dump}");

    // The last slot goes only with --batch-mode.
    let out = cmd(&["remove-key"], &img, &[("--key-file", &k0)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = cmd(
        &["remove-key", "--batch-mode"],
        &img,
        &[("--key-file", &k0)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing left: "No usable keyslot", exit 1, for both tools.
    let out = test_passphrase(&img, &k0, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let cs = cryptsetup_test_passphrase(&img, &k0);
    assert_eq!(cs.status.code(), Some(1), "{}", stderr(&cs));
}

#[test]
fn cryptsetups_changes_are_seen_by_us() {
    let dir = tempdir();
    let (k0, k1, k2) = (
        key(dir.path(), "k0"),
        key(dir.path(), "k1"),
        key(dir.path(), "k2"),
    );
    let img = dir.path().join("cs.img");
    cryptsetup_format(&img, &k0, 20 << 20, 4096, "pbkdf2");
    ok(cryptsetup()
        .args(["luksAddKey", "--batch-mode"])
        .args(CHEAP)
        .arg("--key-file")
        .arg(&k0)
        .arg(&img)
        .arg(&k1));
    assert!(opens(&img, &k1));
    ok(cryptsetup()
        .args(["luksChangeKey", "--batch-mode"])
        .args(CHEAP)
        .arg("--key-file")
        .arg(&k1)
        .arg(&img)
        .arg(&k2));
    assert!(opens(&img, &k2) && !opens(&img, &k1));
    ok(cryptsetup()
        .args(["luksKillSlot", "--batch-mode"])
        .arg(&img)
        .arg("1"));
    assert!(!opens(&img, &k2) && opens(&img, &k0));
    // And we can add to what cryptsetup made.
    let mut add = vec!["add-key", "--key-slot", "7"];
    add.extend(CHEAP);
    let out = cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k1)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(opens(&img, &k1));
    assert!(ok(cryptsetup().arg("luksDump").arg(&img)).contains("  7: luks2"));
}

/// Stop the process right after each write and each sync of an update (the
/// `NBDCRYPT_FAULT_STEP` hook); after every stop the volume opens with the old passphrase (or
/// the new one where the update completed), cryptsetup still reads the header, and the data
/// segment is byte-identical.
#[test]
fn every_stop_point_leaves_a_good_volume() {
    let dir = tempdir();
    let (k0, k1, k2) = (
        key(dir.path(), "k0"),
        key(dir.path(), "k1"),
        key(dir.path(), "k2"),
    );
    let base = dir.path().join("base.img");
    format_cheap(&base, &k0, "20M", 512, "pbkdf2");
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    assert!(
        cmd(&add, &base, &[("--key-file", &k0), ("--new-keyfile", &k1)])
            .status
            .success()
    );
    // Data the updates must not touch.
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[16 << 20..].copy_from_slice(&pattern(4 << 20, 3));
    std::fs::write(&base, &bytes).unwrap();
    let data_hash = hash(&bytes[16 << 20..]);

    let mut change = vec!["change-key"];
    change.extend(CHEAP);
    let mut recovery = vec!["recovery-key", "add"];
    recovery.extend(CHEAP);
    // Slot 1's area in the base image, which removing slot 1 must wipe before the header
    // forgets it.
    let area1 = 290816..290816 + 258048;
    let base_area1 = bytes[area1.clone()].to_vec();
    let wiped = |s: &Stopped| s.bytes[area1.clone()] != base_area1[..];
    type Check<'a> = Box<dyn Fn(bool, &Stopped) -> bool + 'a>;
    type Op<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a Path)>, Check<'a>);
    let ops: Vec<Op> = vec![
        (
            "add-key",
            add.clone(),
            vec![("--key-file", &k0), ("--new-keyfile", &k2)],
            // The header names slot 2 only once its area unlocks.
            Box::new(|done, s| {
                s.opens(&k0) && s.opens(&k1) && s.slot(2) == s.opens(&k2) && (!done || s.slot(2))
            }),
        ),
        (
            "change-key",
            change.clone(),
            vec![("--key-file", &k1), ("--new-keyfile", &k2)],
            // Once done, the old area is wiped too.
            Box::new(|done, s| {
                s.opens(&k0)
                    && (s.opens(&k1) != s.opens(&k2))
                    && (!done || (s.opens(&k2) && wiped(s)))
            }),
        ),
        (
            "remove-key",
            vec!["remove-key"],
            vec![("--key-file", &k1)],
            Box::new(|done, s| {
                let forgotten = !s.slot(1);
                s.opens(&k0) && (!forgotten || wiped(s)) && (!done || (forgotten && !s.opens(&k1)))
            }),
        ),
        (
            "kill-slot",
            vec!["kill-slot", "1"],
            vec![("--key-file", &k0)],
            Box::new(|done, s| {
                let forgotten = !s.slot(1);
                s.opens(&k0) && (!forgotten || wiped(s)) && (!done || (forgotten && !s.opens(&k1)))
            }),
        ),
        (
            "recovery-key",
            recovery.clone(),
            vec![("--key-file", &k0)],
            // The header names slot 2 and its token together, or neither.
            Box::new(|done, s| {
                let token = ok(nbdcrypt().arg("dump").arg(s.img)).contains("nbdcrypt-recovery");
                s.opens(&k0) && s.opens(&k1) && s.slot(2) == token && (!done || token)
            }),
        ),
    ];
    // The stop-point images live in memory (tmpfs) where there is one: a stop point is a
    // process abort, not a power cut, so the next command reads the page cache either way, and
    // the commands' fdatasyncs then do not wait for the disk to take each fresh 20 MiB copy.
    let scratch = match std::fs::metadata("/dev/shm") {
        Ok(m) if m.is_dir() => tempfile::Builder::new()
            .prefix("nbdcrypt-test-")
            .tempdir_in("/dev/shm")
            .unwrap(),
        _ => tempdir(),
    };
    for (name, args, files, check) in ops {
        let mut step = 1;
        loop {
            let img = scratch.path().join(format!("{name}-{step}.img"));
            std::fs::copy(&base, &img).unwrap();
            let mut c = nbdcrypt();
            // The image follows the (sub)command name.
            let at = if args[0] == "recovery-key" { 2 } else { 1 };
            c.args(&args[..at]).arg(&img).args(&args[at..]);
            for (flag, f) in &files {
                c.arg(flag).arg(f);
            }
            c.env("NBDCRYPT_FAULT_STEP", step.to_string());
            let out = run(&mut c);
            let done = out.status.success();
            if !done {
                assert!(
                    stderr(&out).contains(&format!("fault injection: stopping after step {step}")),
                    "{name} step {step}: {}",
                    stderr(&out)
                );
            }
            let after = std::fs::read(&img).unwrap();
            assert_eq!(
                hash(&after[16 << 20..]),
                data_hash,
                "{name} step {step}: data changed"
            );
            let stopped = Stopped {
                img: &img,
                dump: ok(cryptsetup().arg("luksDump").arg(&img)),
                bytes: after,
                opened: Default::default(),
            };
            assert!(
                check(done, &stopped),
                "{name}: after stop point {step} the volume does not open as it should"
            );
            std::fs::remove_file(&img).unwrap();
            if done {
                assert!(step > 4, "{name} finished after only {step} steps");
                break;
            }
            step += 1;
        }
    }
}

/// Refused operations change no byte of the image.
#[test]
fn refused_operations_change_nothing() {
    let dir = tempdir();
    let (k0, k1) = (key(dir.path(), "k0"), key(dir.path(), "k1"));
    let bad = key(dir.path(), "bad");
    let img = dir.path().join("r.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let before = std::fs::read(&img).unwrap();
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a Path)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            add.clone(),
            vec![("--key-file", &bad), ("--new-keyfile", &k1)],
            2,
            "No key available",
        ),
        (
            [add.clone(), vec!["--key-slot", "32"]].concat(),
            vec![("--key-file", &k0), ("--new-keyfile", &k1)],
            1,
            "out of range",
        ),
        (
            [add.clone(), vec!["--key-slot", "0"]].concat(),
            vec![("--key-file", &k0), ("--new-keyfile", &k1)],
            1,
            "already in use",
        ),
        (
            vec!["remove-key"],
            vec![("--key-file", &bad)],
            2,
            "No key available",
        ),
        (
            vec!["kill-slot", "3"],
            vec![("--key-file", &k0)],
            1,
            "not in use",
        ),
        (
            vec!["kill-slot", "0"],
            vec![("--key-file", &bad)],
            1,
            "last one",
        ),
        (
            vec!["change-key"],
            vec![("--key-file", &bad), ("--new-keyfile", &k1)],
            2,
            "No key",
        ),
    ];
    for (args, files, code, needle) in cases {
        let out = cmd(&args, &img, &files);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(
            std::fs::read(&img).unwrap() == before,
            "{args:?} modified the image"
        );
    }
    // A served image is busy for header changes.
    let mut srv = Server::start(&img, &k0, &[]);
    let out = cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k1)]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let (st, _) = srv.stop();
    assert!(st.success());
    assert!(std::fs::read(&img).unwrap() == before);
}

/// 32 keyslots, as cryptsetup; the 33rd add fails clearly and changes nothing.
#[test]
fn thirty_two_slots_then_full() {
    let dir = tempdir();
    let k0 = key(dir.path(), "k0");
    let img = dir.path().join("full.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    for i in 1..32 {
        let k = key(dir.path(), &format!("s{i}"));
        let out = cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k)]);
        assert!(out.status.success(), "slot {i}: {}", stderr(&out));
    }
    let before = std::fs::read(&img).unwrap();
    let k = key(dir.path(), "s32");
    let out = cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("All key slots full."),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&img).unwrap() == before);
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert_eq!(dump.matches(": luks2").count(), 32, "{dump}");
    assert!(opens(&img, &dir.path().join("s31")));
}

/// KDF cost limits at unlock: an Argon2 slot above `--pbkdf-memory-limit` is skipped before
/// anything is allocated and the next slot is tried; alone it is exit 3 naming slot and cost.
/// Absurd time costs and key sizes are refused naming the slot.
#[test]
fn unlock_cost_limits() {
    let dir = tempdir();
    let (k0, k1) = (key(dir.path(), "k0"), key(dir.path(), "k1"));
    let img = dir.path().join("lim.img");
    ok(nbdcrypt()
        .arg("format")
        .arg(&img)
        .args([
            "--size",
            "20M",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "65536",
        ])
        .args([
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
            "--key-file",
        ])
        .arg(&k0));
    let limit = ["--pbkdf-memory-limit", "32768"];
    let out = test_passphrase(&img, &k0, &limit);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("keyslot 0 needs 65536 KiB of memory for Argon2, above the 32768 KiB"),
        "{}",
        stderr(&out)
    );
    assert_eq!(test_passphrase(&img, &k0, &[]).status.code(), Some(0));
    // A PBKDF2 slot beside it still opens under the limit (the Argon2 slot is skipped).
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    assert!(
        cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k1)])
            .status
            .success()
    );
    let out = test_passphrase(&img, &k1, &limit);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("Key slot 1 unlocked."));

    // Absurd costs in the header are refused naming the slot.
    for (field, value, needle) in [
        (
            "time",
            serde_json::json!(1u64 << 25),
            "keyslot 0 argon2 time cost 33554432",
        ),
        (
            "key_size",
            serde_json::json!(32),
            "keyslot 0 key_size 32 is not supported",
        ),
    ] {
        let bad = dir.path().join(format!("{field}.img"));
        std::fs::copy(&img, &bad).unwrap();
        let mut bytes = std::fs::read(&bad).unwrap();
        for at in [0usize, 16384] {
            let (hdr, md) =
                nbdcrypt::format::decode_copy(&bytes[at..at + 16384], at as u64).unwrap();
            let mut v = serde_json::to_value(&md).unwrap();
            if field == "time" {
                v["keyslots"]["0"]["kdf"]["time"] = value.clone();
            } else {
                v["keyslots"]["0"]["key_size"] = value.clone();
            }
            let md = serde_json::from_value(v).unwrap();
            bytes[at..at + 16384]
                .copy_from_slice(&nbdcrypt::format::encode_copy(&hdr, &md).unwrap());
        }
        std::fs::write(&bad, &bytes).unwrap();
        let out = test_passphrase(&bad, &k0, &["--key-slot", "0"]);
        assert_eq!(out.status.code(), Some(1), "{field}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{field}: {}", stderr(&out));
    }
}

/// Passphrases are bytes: a UTF-8 passphrase works the same in every locale, and a key file
/// that fails and ends in a newline says so.
#[test]
fn passphrases_are_bytes() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempdir();
    let k = dir.path().join("utf8");
    std::fs::write(&k, "pässwörd ✓".as_bytes()).unwrap();
    let img = dir.path().join("u.img");
    format_cheap(&img, &k, "20M", 512, "pbkdf2");
    for locale in ["C", "C.UTF-8", "POSIX"] {
        let mut child = nbdcrypt()
            .arg("test-passphrase")
            .arg(&img)
            .env("LC_ALL", locale)
            .env("LANG", locale)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all("pässwörd ✓\n".as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{locale}: {}", stderr(&out));
    }
    let nl = dir.path().join("with-newline");
    std::fs::write(&nl, "pässwörd ✓\n".as_bytes()).unwrap();
    let out = test_passphrase(&img, &nl, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ends with a newline"),
        "{}",
        stderr(&out)
    );
}

/// `recovery-key add`: a BitLocker-format key (8 groups of 6 digits, each divisible by 11 and
/// below 720896) stored as a keyslot with an `nbdcrypt-recovery` token; it unlocks through
/// `--recovery-key` (file or stdin), also typed with spaces; a mistyped group is named before
/// any KDF runs; cryptsetup sees the slot and the token.
#[test]
fn recovery_keys() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempdir();
    let k0 = key(dir.path(), "k0");
    let img = dir.path().join("rk.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let mut c = nbdcrypt();
    c.args(["recovery-key", "add"])
        .arg(&img)
        .arg("--key-file")
        .arg(&k0)
        .args(CHEAP);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let groups: Vec<&str> = printed.split('-').collect();
    assert_eq!(groups.len(), 8, "{printed}");
    for g in &groups {
        let v: u32 = g.parse().unwrap();
        assert!(
            g.len() == 6 && v.is_multiple_of(11) && v < 720896,
            "{printed}"
        );
    }
    let id = stderr(&out)
        .split("recovery id ")
        .nth(1)
        .and_then(|r| r.get(..8))
        .unwrap()
        .to_string();
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    let rk = dir.path().join("rk.txt");
    std::fs::write(&rk, format!("{printed}\n")).unwrap();
    let out = run(nbdcrypt()
        .arg("test-passphrase")
        .arg(&img)
        .arg("--recovery-key")
        .arg(&rk));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("Key slot 1 unlocked."));
    // Typed on stdin, with spaces instead of dashes.
    let mut child = nbdcrypt()
        .arg("test-passphrase")
        .arg(&img)
        .arg("--recovery-key")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let spaced = printed.replace('-', " ") + "\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spaced.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // One digit off in group 3: named by the divisibility check, exit 1.
    let mut typo: Vec<u8> = printed.clone().into_bytes();
    let pos = 2 * 7 + 5; // last digit of group 3
    typo[pos] = if typo[pos] == b'9' {
        b'0'
    } else {
        typo[pos] + 1
    };
    std::fs::write(&rk, &typo).unwrap();
    let out = run(nbdcrypt()
        .arg("test-passphrase")
        .arg(&img)
        .arg("--recovery-key")
        .arg(&rk));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("recovery key group 3"),
        "{}",
        stderr(&out)
    );

    // cryptsetup: the slot opens with the canonical text as passphrase; the token is listed.
    std::fs::write(&rk, printed.as_bytes()).unwrap();
    assert!(opens(&img, &rk));
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert!(dump.contains("nbdcrypt-recovery"), "{dump}");
    let ours = ok(nbdcrypt().arg("dump").arg(&img));
    assert!(ours.contains(&format!("Recovery ID: {id}")), "{ours}");
    // Serving with the recovery key works too.
    let mut srv = nbdcrypt()
        .arg("open")
        .arg(&img)
        .arg("--recovery-key")
        .arg(&rk)
        .arg("--socket")
        .arg(dir.path().join("rk.sock"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.path().join("rk.sock");
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let size = ok(nbd_tool("nbdinfo").args([
        "--size",
        &format!("nbd+unix:///rk?socket={}", sock.display()),
    ]));
    assert_eq!(size.trim(), (4u64 << 20).to_string());
    unsafe { libc::kill(srv.id() as i32, libc::SIGTERM) };
    assert!(srv.wait().unwrap().success());
    // Erasing drops recovery tokens with the keyslots.
    let erased = dir.path().join("erased.img");
    std::fs::copy(&img, &erased).unwrap();
    let out = run(nbdcrypt().arg("erase").arg(&erased).arg("--batch-mode"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!ok(nbdcrypt().arg("dump").arg(&erased)).contains("nbdcrypt-recovery"));
    // Removing the recovery slot drops its token (and only it).
    let out = run(nbdcrypt()
        .args(["kill-slot"])
        .arg(&img)
        .arg("1")
        .arg("--key-file")
        .arg(&k0));
    assert!(out.status.success(), "{}", stderr(&out));
    let dump = ok(nbdcrypt().args(["dump", "--json"]).arg(&img));
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["tokens"], serde_json::json!([]), "{dump}");
    assert_eq!(v["metadata"]["tokens"], serde_json::json!({}), "{dump}");
}

/// `add-key --volume-key-file` adds a slot from the raw volume key (checked against the digest;
/// a wrong key changes nothing), and the KDF flags of `format` work on `add-key` and
/// `change-key` (cryptsetup shows the costs asked for).
#[test]
fn add_key_from_volume_key_and_kdf_flags() {
    let dir = tempdir();
    let (k0, k1, k2) = (
        key(dir.path(), "k0"),
        key(dir.path(), "k1"),
        key(dir.path(), "k2"),
    );
    let img = dir.path().join("vk.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let hex = cryptsetup_volume_key(&img, &k0);
    let vk: Vec<u8> = (0..64)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let vk_file = dir.path().join("vk.bin");
    let wrong = dir.path().join("wrong.bin");
    std::fs::write(&vk_file, &vk).unwrap();
    std::fs::write(&wrong, [7u8; 64]).unwrap();
    let before = std::fs::read(&img).unwrap();
    // Costs that are nobody's default, small enough to be cheap (4000 KiB, not tens of MiB).
    let argon = [
        "--pbkdf",
        "argon2i",
        "--pbkdf-force-iterations",
        "5",
        "--pbkdf-memory",
        "4000",
        "--pbkdf-parallel",
        "2",
    ];
    let mut add = vec!["add-key"];
    add.extend(argon);
    let out = cmd(
        &add,
        &img,
        &[("--volume-key-file", &wrong), ("--new-keyfile", &k1)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    assert!(std::fs::read(&img).unwrap() == before);
    let out = cmd(
        &add,
        &img,
        &[("--volume-key-file", &vk_file), ("--new-keyfile", &k1)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(opens(&img, &k1));
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert!(
        dump.contains("PBKDF:      argon2i")
            && dump.contains("Time cost:  5")
            && dump.contains("Memory:     4000\n")
            && dump.contains("Threads:    2"),
        "{dump}"
    );
    let mut change = vec![
        "change-key",
        "--pbkdf",
        "argon2id",
        "--pbkdf-force-iterations",
        "6",
    ];
    change.extend(["--pbkdf-memory", "3300", "--pbkdf-parallel", "1"]);
    let out = cmd(
        &change,
        &img,
        &[("--key-file", &k1), ("--new-keyfile", &k2)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert!(
        dump.contains("PBKDF:      argon2id")
            && dump.contains("Time cost:  6")
            && dump.contains("Memory:     3300\n"),
        "{dump}"
    );
    assert!(opens(&img, &k2) && !opens(&img, &k1));
}

/// `kill-slot` asks for the passphrase of another slot: a wrong one is exit 2 and changes
/// nothing; `--batch-mode` skips the question.
#[test]
fn kill_slot_needs_another_slots_passphrase() {
    let dir = tempdir();
    let (k0, k1) = (key(dir.path(), "k0"), key(dir.path(), "k1"));
    let bad = key(dir.path(), "bad");
    let img = dir.path().join("ks.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    assert!(
        cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k1)])
            .status
            .success()
    );
    let before = std::fs::read(&img).unwrap();
    for wrong in [&bad, &k1] {
        // k1 opens only slot 1 itself, which is the one being killed: not proof enough.
        let out = cmd(&["kill-slot", "1"], &img, &[("--key-file", wrong)]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(std::fs::read(&img).unwrap() == before);
    }
    let out = cmd(&["kill-slot", "1", "--batch-mode"], &img, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(opens(&img, &k0) && !opens(&img, &k1));
}

/// An unwritable image (immutable, so even root cannot open it for writing) refuses every
/// header change with exit 4 and no byte changes; reading it still works.
#[test]
fn unwritable_image_changes_nothing() {
    struct Immutable<'a>(&'a Path);
    impl Drop for Immutable<'_> {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        }
    }
    let dir = tempdir();
    let (k0, k1) = (key(dir.path(), "k0"), key(dir.path(), "k1"));
    let img = dir.path().join("ro.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let before = std::fs::read(&img).unwrap();
    let st = Command::new(require("chattr", "e2fsprogs"))
        .arg("+i")
        .arg(&img)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "chattr +i must work on the test directory's filesystem"
    );
    let _guard = Immutable(&img);
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    let mut rec = vec!["recovery-key", "add"];
    rec.extend(CHEAP);
    type Files<'a> = &'a [(&'a str, &'a Path)];
    let new: Files = &[("--key-file", &k0), ("--new-keyfile", &k1)];
    let old: Files = &[("--key-file", &k0)];
    let cases: Vec<(Vec<&str>, Files)> = vec![
        (add, new),
        (
            vec![
                "change-key",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
            ],
            new,
        ),
        (vec!["remove-key", "--batch-mode"], old),
        (vec!["kill-slot", "0", "--batch-mode"], &[]),
        (vec!["erase", "--batch-mode"], &[]),
        (vec!["repair"], &[]),
    ];
    for (args, files) in cases {
        let out = cmd(&args, &img, files);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("Operation not permitted"),
            "{}",
            stderr(&out)
        );
    }
    let out = run(nbdcrypt()
        .args(&rec[..2])
        .arg(&img)
        .args(&rec[2..])
        .arg("--key-file")
        .arg(&k0));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(std::fs::read(&img).unwrap() == before);
    assert!(opens(&img, &k0));
}

/// While one command changes the header, a second is refused as busy (exit 5) and changes
/// nothing; the first completes. The first holds the header lock while it waits to read its new
/// passphrase from a FIFO (it opens `--new-keyfile` after locking and unlocking,
/// src/cli/keyslots.rs `add_key`), so the second runs exactly while it is held.
#[test]
fn concurrent_header_changes_are_busy() {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Stdio;
    let dir = tempdir();
    let (k0, k1, k2) = (
        key(dir.path(), "k0"),
        key(dir.path(), "k1"),
        key(dir.path(), "k2"),
    );
    let img = dir.path().join("cc.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let fifo = dir.path().join("k1.fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let mut first = nbdcrypt()
        .arg("add-key")
        .arg(&img)
        .args(CHEAP)
        .arg("--key-file")
        .arg(&k0)
        .arg("--new-keyfile")
        .arg(&fifo)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The write end opens (non-blocking) once the first command has opened the read end.
    let mut w = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if let Some(st) = first.try_wait().unwrap() {
                    panic!("the first add-key exited ({st}) before reading its new passphrase");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("open {}: {e}", fifo.display()),
        }
    };
    let before = std::fs::read(&img).unwrap();
    let mut add = vec!["add-key"];
    add.extend(CHEAP);
    let out = cmd(&add, &img, &[("--key-file", &k0), ("--new-keyfile", &k2)]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the busy add-key changed the image"
    );
    w.write_all(&std::fs::read(&k1).unwrap()).unwrap();
    drop(w);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(opens(&img, &k1) && !opens(&img, &k2));
}
