//! Fault injection below the volume layer, through the debug-build hook
//! `NBDCRYPT_FAULT_IO` (crates/luks2/src/volume/store.rs): failed reads, writes, short writes and
//! fdatasyncs reach the NBD client as `EIO` or `ENOSPC`, the server keeps serving, no
//! acknowledged write is lost; a full disk during a header-writing command (`add-key`,
//! `change-key`, `remove-key`, `kill-slot`, `recovery-key add`, `header-restore`) leaves the
//! header readable, and the error says which state the image is in ("nothing changed" exactly
//! when the state before the command is observed) with a hint that, followed, completes the
//! change.

use crate::common;

use common::nbd::{Raw, CMD_FLUSH, CMD_READ, CMD_WRITE, ENOSPC};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const EIO: u32 = 5;

#[test]
fn nbd_clients_get_eio_and_enospc_and_nothing_acknowledged_is_lost() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("vol.img");
    format_cheap(&img, &key, "17M", 512, "pbkdf2");
    let mut cmd = nbdcrypt();
    // read@4: read 1 is the unlock's keyslot-area read, so the third NBD read fails.
    cmd.env(
        "NBDCRYPT_FAULT_IO",
        "write@4=EIO,write@7=ENOSPC,write@10=short,read@4=EIO,sync@2=EIO",
    )
    .env("NBDCRYPT_LOG", "debug") // with the connection spans
    .arg("open")
    .arg(&img)
    .arg("--key-file")
    .arg(&key)
    .arg("--socket")
    .arg(img.with_extension("sock"));
    let mut srv = Server::launch(cmd, img.with_extension("sock"), "vol".into());
    let (mut r, _, _) = Raw::go(&srv.socket);
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for i in 1..=12u64 {
        let data = pattern(4096, i);
        let off = i * 65536;
        r.try_request(0, CMD_WRITE, i, off, 4096, &data).unwrap();
        let (err, cookie) = r.reply().unwrap();
        assert_eq!(cookie, i);
        if err == 0 {
            acked.push((off, data));
        } else {
            errors.push((i, err));
        }
    }
    assert_eq!(errors, vec![(4, EIO), (7, ENOSPC), (10, ENOSPC)]);
    let mut flushes = Vec::new();
    for i in 0..3 {
        r.request(0, CMD_FLUSH, 100 + i, 0, 0);
        flushes.push(r.reply().unwrap().0);
    }
    assert_eq!(flushes, vec![0, EIO, 0], "the second fdatasync fails");
    // Reads: the third fails with EIO (no payload in a simple error reply), then all succeed.
    let mut read_errors = 0;
    for (off, data) in &acked {
        loop {
            r.request(0, CMD_READ, 200, *off, 4096);
            let (err, _) = r.reply().unwrap();
            if err != 0 {
                assert_eq!(err, EIO);
                read_errors += 1;
                continue;
            }
            let mut got = vec![0u8; 4096];
            std::io::Read::read_exact(&mut r.s, &mut got).unwrap();
            assert!(got == *data, "acknowledged write at {off} lost");
            break;
        }
    }
    assert_eq!(read_errors, 1);
    r.request(0, common::nbd::CMD_DISC, 0, 0, 0);
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");
    assert_eq!(log.matches("fault injection").count(), 5, "{log}");
    // Each failure's warning names its connection (the session's debug span, also on the
    // blocking pool: the failed fdatasync is served there).
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("export I/O error"))
        .collect();
    assert_eq!(warnings.len(), 5, "{log}");
    assert!(warnings.iter().all(|l| l.contains("nbd_conn")), "{log}");

    // Restarted without faults: every acknowledged write is there.
    let mut srv = Server::start(&img, &key, &[]);
    let (mut r, _, _) = Raw::go(&srv.socket);
    for (off, data) in &acked {
        assert!(
            r.read(*off, 4096) == *data,
            "acknowledged write at {off} lost"
        );
    }
    srv.stop();
    eprintln!(
        "faults: 5 injected over NBD (3 writes, 1 fdatasync, 1 read), {} acknowledged writes kept",
        acked.len()
    );
}

/// A failed keyslot-area read while unlocking is reported as that read (op and offset), and the
/// next run, without the fault, opens the image: header reads go through the same fault hook as
/// the data path's.
#[test]
fn failed_keyslot_area_read_is_reported() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("vol.img");
    format_cheap(&img, &key, "17M", 512, "pbkdf2");
    let out = run(nbdcrypt()
        .env("NBDCRYPT_FAULT_IO", "read@1=EIO")
        .arg("test-passphrase")
        .arg(&img)
        .arg("--key-file")
        .arg(&key));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("read keyslot area of {} at offset", img.display())),
        "{err}"
    );
    assert_eq!(test_passphrase(&img, &key, &[]).status.code(), Some(0));
}

/// The files of a header-command fault run: `key` opens slot 0 of the fresh image, `new` is the
/// second passphrase, `backup` a header backup taken before the setup.
struct Files {
    img: PathBuf,
    key: PathBuf,
    new: PathBuf,
    backup: PathBuf,
}

impl Files {
    fn opens(&self, k: &Path) -> bool {
        test_passphrase(&self.img, k, &[]).status.code() == Some(0)
    }

    /// Whether the header in force lists keyslot 1.
    fn has_slot_1(&self) -> bool {
        ok(nbdcrypt().arg("dump").arg(&self.img)).contains("\n  1: luks2")
    }

    fn add_new_key(&self) {
        ok(nbdcrypt()
            .arg("add-key")
            .arg(&self.img)
            .arg("--key-file")
            .arg(&self.key)
            .arg("--new-keyfile")
            .arg(&self.new)
            .args(["--pbkdf", "pbkdf2"])
            .args(cheap_kdf_args("pbkdf2")));
    }
}

/// A header-writing command under fault injection: what it needs on the fresh image, the
/// command, and the observable states before and after it.
struct HeaderOp {
    name: &'static str,
    setup: fn(&Files),
    cmd: fn(&Files) -> Command,
    before: fn(&Files) -> bool,
    after: fn(&Files) -> bool,
}

fn cheap(c: &mut Command) -> &mut Command {
    c.args(["--pbkdf", "pbkdf2"]).args(cheap_kdf_args("pbkdf2"))
}

/// ENOSPC (or a short write) at each write of `op` in turn, on a fresh image each time. Every
/// failed run: the error names the full disk, the header loads, the other passphrase (`key`,
/// or for `change-key` the old or the new one) opens, the message says "nothing changed"
/// exactly when `op.before` holds, "the change took effect" only when `op.after` holds, and
/// its hint, followed, reaches `op.after` ("nothing changed": the same command again;
/// `nbdcrypt repair`, `nbdcrypt kill-slot`, `header-restore again` as named). Returns (failed
/// runs, of which reported unchanged, reported took effect).
fn fault_sweep(op: &HeaderOp) -> (usize, usize, usize) {
    let dir = tempdir();
    let (mut failed, mut unchanged, mut took, mut destroyed) = (0, 0, 0, 0);
    for fault in ["ENOSPC", "short"] {
        for n in 1.. {
            let f = Files {
                img: dir.path().join(format!("{fault}-{n}.img")),
                key: key_file(dir.path()),
                new: dir.path().join("new"),
                backup: dir.path().join(format!("{fault}-{n}.hdr")),
            };
            std::fs::write(&f.new, b"the new passphrase").unwrap();
            format_cheap(&f.img, &f.key, "17M", 512, "pbkdf2");
            (op.setup)(&f);
            let what = format!("{} {fault}@{n}", op.name);
            let out = run((op.cmd)(&f).env("NBDCRYPT_FAULT_IO", format!("write@{n}={fault}")));
            if out.status.success() {
                // Past the last write: nothing was injected; the change is complete.
                assert!(n > 1, "{what}: no write at all?");
                assert!((op.after)(&f), "{what}: succeeded without the change");
                break;
            }
            failed += 1;
            let err = stderr(&out);
            assert!(err.contains("No space left on device"), "{what}: {err}");
            let dump = run(nbdcrypt().arg("dump").arg(&f.img));
            assert_eq!(dump.status.code(), Some(0), "{what}: {}", stderr(&dump));
            if op.name == "change-key" {
                assert!(f.opens(&f.key) || f.opens(&f.new), "{what}: nothing opens");
            } else {
                assert!(f.opens(&f.key), "{what}: slot 0 no longer opens");
            }
            let is_before = (op.before)(&f);
            assert_eq!(
                err.contains("nothing changed"),
                is_before,
                "{what}: the state before the command is {}observed, the message says: {err}",
                if is_before { "" } else { "not " }
            );
            if err.contains("the change took effect") {
                assert!((op.after)(&f), "{what}: reported done, not done: {err}");
                took += 1;
            }
            unchanged += usize::from(is_before);
            destroyed += usize::from(err.contains("the header is unchanged, but"));
            let hint = err
                .lines()
                .find_map(|l| l.strip_prefix("hint: "))
                .unwrap_or_else(|| panic!("{what}: no hint: {err}"));
            // Follow the hint; afterwards the change is complete.
            if is_before || hint.contains("header-restore again") {
                ok(&mut (op.cmd)(&f));
            } else if hint.contains("`nbdcrypt repair") {
                ok(nbdcrypt().arg("repair").arg(&f.img));
                let dump = run(nbdcrypt().arg("dump").arg(&f.img));
                assert!(!stderr(&dump).contains("header copies"), "{what}: repair");
            } else if hint.contains("`nbdcrypt kill-slot") {
                ok(nbdcrypt()
                    .args(["kill-slot"])
                    .arg(&f.img)
                    .arg("1")
                    .arg("--key-file")
                    .arg(&f.key));
            }
            assert!(
                (op.after)(&f),
                "{what}: not complete after the hint {hint:?}"
            );
            assert!(n < 50, "{what}: keeps writing");
        }
    }
    eprintln!(
        "faults: {}: {failed} failed runs: {unchanged} reported and observed unchanged, {took} \
         reported and observed as having taken effect, {destroyed} as keys destroyed, header not",
        op.name
    );
    assert!(failed >= 2, "{}: no write failed", op.name);
    (failed, unchanged, took)
}

/// `add-key`: a failed run leaves the old passphrase working; a torn or missing second header
/// copy after the new one is valid leaves the new keyslot in force, said so.
#[test]
fn disk_full_during_add_key_reports_the_state() {
    let (failed, unchanged, took) = fault_sweep(&HeaderOp {
        name: "add-key",
        setup: |_| {},
        cmd: |f| {
            let mut c = nbdcrypt();
            c.arg("add-key").arg(&f.img).arg("--key-file").arg(&f.key);
            cheap(c.arg("--new-keyfile").arg(&f.new));
            c
        },
        before: |f| !f.opens(&f.new),
        after: |f| f.opens(&f.key) && f.opens(&f.new),
    });
    assert!(failed >= 4 && unchanged >= 1 && took >= 1);
}

/// `change-key`: before the header commit the old passphrase opens and the message says
/// "nothing changed"; after it only the new one opens and the message says the change took
/// effect and what is left (a header copy, the old keyslot area's wipe).
#[test]
fn disk_full_during_change_key_reports_the_state() {
    let (failed, unchanged, took) = fault_sweep(&HeaderOp {
        name: "change-key",
        setup: |_| {},
        cmd: |f| {
            let mut c = nbdcrypt();
            c.arg("change-key")
                .arg(&f.img)
                .arg("--key-file")
                .arg(&f.key);
            cheap(c.arg("--new-keyfile").arg(&f.new));
            c
        },
        before: |f| f.opens(&f.key) && !f.opens(&f.new),
        after: |f| !f.opens(&f.key) && f.opens(&f.new),
    });
    assert!(failed >= 4 && unchanged >= 1 && took >= 1);
}

/// `remove-key` of slot 1: its area is wiped before the header drops it, so a failure there
/// reports the slot as destroyed but listed, with `kill-slot` to finish.
#[test]
fn disk_full_during_remove_key_reports_the_state() {
    let (_, unchanged, took) = fault_sweep(&HeaderOp {
        name: "remove-key",
        setup: Files::add_new_key,
        cmd: |f| {
            let mut c = nbdcrypt();
            c.arg("remove-key")
                .arg(&f.img)
                .arg("--key-file")
                .arg(&f.new);
            c.arg("--batch-mode");
            c
        },
        before: |f| f.opens(&f.new),
        after: |f| !f.opens(&f.new) && !f.has_slot_1(),
    });
    assert!(unchanged >= 1 && took >= 1);
}

/// `kill-slot 1`, authorised by slot 0's passphrase.
#[test]
fn disk_full_during_kill_slot_reports_the_state() {
    let (_, unchanged, took) = fault_sweep(&HeaderOp {
        name: "kill-slot",
        setup: Files::add_new_key,
        cmd: |f| {
            let mut c = nbdcrypt();
            c.arg("kill-slot").arg(&f.img).arg("1");
            c.arg("--key-file").arg(&f.key);
            c
        },
        before: |f| f.opens(&f.new),
        after: |f| !f.opens(&f.new) && !f.has_slot_1(),
    });
    assert!(unchanged >= 1 && took >= 1);
}

/// `recovery-key add`: the new keyslot 1 is listed or not, as reported.
#[test]
fn disk_full_during_recovery_key_add_reports_the_state() {
    let (_, unchanged, took) = fault_sweep(&HeaderOp {
        name: "recovery-key add",
        setup: |_| {},
        cmd: |f| {
            let mut c = nbdcrypt();
            c.args(["recovery-key", "add"]).arg(&f.img);
            cheap(c.arg("--key-file").arg(&f.key));
            c
        },
        before: |f| !f.has_slot_1(),
        after: Files::has_slot_1,
    });
    assert!(unchanged >= 1 && took >= 1);
}

/// `header-restore` of a backup taken before slot 1 was added: the backup's keyslots area goes
/// over slot 1's key material before the header is written, so a failure after it reports slot
/// 1 destroyed and the restore to run again.
#[test]
fn disk_full_during_header_restore_reports_the_state() {
    let (_, unchanged, took) = fault_sweep(&HeaderOp {
        name: "header-restore",
        setup: |f| {
            ok(nbdcrypt()
                .arg("header-backup")
                .arg(&f.img)
                .arg("--header-backup-file")
                .arg(&f.backup));
            f.add_new_key();
        },
        cmd: |f| {
            let mut c = nbdcrypt();
            c.arg("header-restore").arg(&f.img);
            c.arg("--header-backup-file").arg(&f.backup);
            c
        },
        before: |f| f.opens(&f.new),
        after: |f| !f.opens(&f.new) && !f.has_slot_1(),
    });
    assert!(unchanged >= 1 && took >= 1);
}
