//! `erase`, `header-backup`, `header-restore` and `repair`, against real cryptsetup.

use crate::common;

use common::*;
use std::path::Path;

fn ours(args: &[&str], img: &Path) -> std::process::Output {
    run(nbdcrypt().arg(args[0]).arg(img).args(&args[1..]))
}

/// After `erase` neither copy opens with any passphrase (both tools: no usable keyslot), the
/// old key material is gone, and the data segment is untouched.
#[test]
fn erase_leaves_nothing_that_opens() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("e.img");
    format_cheap(&img, &key, "20M", 512, "pbkdf2");
    let before = std::fs::read(&img).unwrap();
    let out = ours(&["erase"], &img);
    assert_eq!(
        out.status.code(),
        Some(1),
        "asks without a terminal: {}",
        stderr(&out)
    );
    assert!(std::fs::read(&img).unwrap() == before);
    let out = ours(&["erase", "--batch-mode"], &img);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = std::fs::read(&img).unwrap();
    let area = 32768..32768 + 256000;
    assert!(
        after[area.clone()] != before[area],
        "old key material still there"
    );
    assert!(
        after[16 << 20..] == before[16 << 20..],
        "data segment changed"
    );
    assert_eq!(test_passphrase(&img, &key, &[]).status.code(), Some(1));
    assert_eq!(
        cryptsetup_test_passphrase(&img, &key).status.code(),
        Some(1)
    );
    // Each copy alone: damage the other, still nothing opens.
    for (damage, keep) in [(100usize, "secondary"), (16384 + 100, "primary")] {
        let one = dir.path().join(format!("only-{keep}.img"));
        let mut b = after.clone();
        b[damage] ^= 1;
        std::fs::write(&one, &b).unwrap();
        let out = test_passphrase(&one, &key, &[]);
        assert_eq!(out.status.code(), Some(1), "{keep}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("No usable keyslot"),
            "{}",
            stderr(&out)
        );
    }
    let dump = ok(cryptsetup().arg("luksDump").arg(&img));
    assert!(!dump.contains(": luks2"), "{dump}");
}

/// Each tool restores the other's backups, and the volume then opens again.
#[test]
fn backups_cross_restore_with_cryptsetup() {
    let dir = tempdir();
    let key = key_file(dir.path());
    // cryptsetup's backup → our restore.
    let a = dir.path().join("a.img");
    cryptsetup_format(&a, &key, 20 << 20, 4096, "pbkdf2");
    let a_bak = dir.path().join("a.bak");
    ok(cryptsetup()
        .arg("luksHeaderBackup")
        .arg(&a)
        .arg("--header-backup-file")
        .arg(&a_bak));
    ok(cryptsetup().args(["erase", "--batch-mode"]).arg(&a));
    assert_eq!(test_passphrase(&a, &key, &[]).status.code(), Some(1));
    let out = run(nbdcrypt()
        .arg("header-restore")
        .arg(&a)
        .arg("--header-backup-file")
        .arg(&a_bak));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(test_passphrase(&a, &key, &[]).status.code(), Some(0));
    assert_eq!(cryptsetup_test_passphrase(&a, &key).status.code(), Some(0));

    // Our backup → cryptsetup's restore.
    let b = dir.path().join("b.img");
    format_cheap(&b, &key, "20M", 512, "pbkdf2");
    let b_bak = dir.path().join("b.bak");
    let out = run(nbdcrypt()
        .arg("header-backup")
        .arg(&b)
        .arg("--header-backup-file")
        .arg(&b_bak));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&b_bak).unwrap().len(), 16 << 20);
    let out = ours(&["erase", "--batch-mode"], &b);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cryptsetup_test_passphrase(&b, &key).status.code(), Some(1));
    ok(cryptsetup()
        .args(["luksHeaderRestore", "--batch-mode"])
        .arg(&b)
        .arg("--header-backup-file")
        .arg(&b_bak));
    assert_eq!(cryptsetup_test_passphrase(&b, &key).status.code(), Some(0));
    assert_eq!(test_passphrase(&b, &key, &[]).status.code(), Some(0));
    // An existing backup file is never overwritten.
    let out = run(nbdcrypt()
        .arg("header-backup")
        .arg(&b)
        .arg("--header-backup-file")
        .arg(&b_bak));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// A backup of another volume (another volume key digest) is refused unless --batch-mode, and
/// a file that is not a header backup is refused always; refused restores change nothing.
#[test]
fn restore_refuses_foreign_and_bogus_backups() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    format_cheap(&a, &key, "20M", 512, "pbkdf2");
    format_cheap(&b, &key, "20M", 512, "pbkdf2");
    let a_bak = dir.path().join("a.bak");
    ok(nbdcrypt()
        .arg("header-backup")
        .arg(&a)
        .arg("--header-backup-file")
        .arg(&a_bak));
    let before = std::fs::read(&b).unwrap();
    let restore = |batch: bool, bak: &Path| {
        let mut c = nbdcrypt();
        c.arg("header-restore")
            .arg(&b)
            .arg("--header-backup-file")
            .arg(bak);
        if batch {
            c.arg("--batch-mode");
        }
        run(&mut c)
    };
    let out = restore(false, &a_bak);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another volume"), "{}", stderr(&out));
    assert!(std::fs::read(&b).unwrap() == before);
    let bogus = dir.path().join("bogus.bak");
    std::fs::write(&bogus, pattern(16 << 20, 1)).unwrap();
    let out = restore(true, &bogus);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a LUKS2 header backup"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&b).unwrap() == before);
    let out = restore(true, &a_bak);
    assert!(out.status.success(), "{}", stderr(&out));
    // Now b carries a's header: a's keyslots area byte for byte, a's UUID, a newer seqid.
    let after = std::fs::read(&b).unwrap();
    assert!(after[32768..16 << 20] == std::fs::read(&a_bak).unwrap()[32768..]);
    let uuid = |img: &Path| {
        ok(nbdcrypt().arg("dump").arg(img))
            .lines()
            .find(|l| l.starts_with("UUID:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(uuid(&a), uuid(&b));
    assert_eq!(test_passphrase(&b, &key, &[]).status.code(), Some(0));
}

/// A backup of the same volume whose data segment starts elsewhere (or whose keyslots area
/// has another size) is refused even with `--batch-mode`, in cryptsetup's words, and the
/// image stays byte-identical: restoring it would move the start of the data.
#[test]
fn restore_refuses_a_backup_with_another_layout() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("v.img");
    format_cheap(&img, &key, "20M", 512, "pbkdf2");
    let bak = dir.path().join("v.bak");
    ok(nbdcrypt()
        .arg("header-backup")
        .arg(&img)
        .arg("--header-backup-file")
        .arg(&bak));
    type Edit = fn(&mut serde_json::Value);
    let rows: [(Edit, &str); 2] = [
        (
            |v| v["segments"]["0"]["offset"] = ((17u64 << 20).to_string()).into(),
            "Data offset differ on device and backup, restore failed.",
        ),
        (
            |v| v["config"]["keyslots_size"] = ((16u64 << 20) - 32768 - 4096).to_string().into(),
            "Binary header with keyslot areas size differ on device and backup",
        ),
    ];
    for (edit, needle) in rows {
        let dev = dir.path().join("dev.img");
        std::fs::copy(&img, &dev).unwrap();
        edit_metadata(&dev, edit);
        let before = std::fs::read(&dev).unwrap();
        let out = run(nbdcrypt()
            .arg("header-restore")
            .arg(&dev)
            .arg("--header-backup-file")
            .arg(&bak)
            .arg("--batch-mode"));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(
            std::fs::read(&dev).unwrap() == before,
            "{needle}: image changed"
        );
    }
}

/// A zeroed primary still opens (warning, no write); `repair` rewrites it from the secondary,
/// after which both copies are good for us and cryptsetup finds nothing to repair.
#[test]
fn repair_rewrites_a_zeroed_primary() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("r.img");
    format_cheap(&img, &key, "20M", 512, "pbkdf2");
    let out = ours(&["repair"], &img);
    assert!(out.status.success() && stderr(&out).contains("nothing to repair"));
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[..16384].fill(0);
    std::fs::write(&img, &bytes).unwrap();
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("primary header is damaged"));
    assert!(
        std::fs::read(&img).unwrap() == bytes,
        "test-passphrase wrote"
    );
    let out = ours(&["repair"], &img);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let repaired = std::fs::read(&img).unwrap();
    ok(cryptsetup().args(["repair", "--batch-mode"]).arg(&img));
    assert!(
        std::fs::read(&img).unwrap() == repaired,
        "cryptsetup still repaired something"
    );
    assert_eq!(
        cryptsetup_test_passphrase(&img, &key).status.code(),
        Some(0)
    );
}

/// A backup whose secondary copy is damaged restores its good copy to both places; a restore
/// stopped after any step can be run again, and once its first header write is done the
/// restored header (newer `seqid`) is the one that opens.
#[test]
fn restore_is_safe_to_repeat_and_never_writes_a_damaged_copy() {
    let dir = tempdir();
    let k0 = key_file(dir.path());
    let k1 = dir.path().join("k1");
    std::fs::write(&k1, b"the changed passphrase").unwrap();
    let img = dir.path().join("s.img");
    format_cheap(&img, &k0, "20M", 512, "pbkdf2");
    let bak = dir.path().join("s.bak");
    ok(nbdcrypt()
        .arg("header-backup")
        .arg(&img)
        .arg("--header-backup-file")
        .arg(&bak));
    let mut b = std::fs::read(&bak).unwrap();
    b[16384 + 5000] ^= 1; // damage the backup's secondary JSON
    let damaged = dir.path().join("damaged.bak");
    std::fs::write(&damaged, &b).unwrap();
    let mut change = vec![
        "change-key",
        "--new-keyfile",
        k1.to_str().unwrap(),
        "--pbkdf",
        "pbkdf2",
    ];
    change.extend(cheap_kdf_args("pbkdf2"));
    let out = run(nbdcrypt()
        .arg(change[0])
        .arg(&img)
        .args(&change[1..])
        .arg("--key-file")
        .arg(&k0));
    assert!(out.status.success(), "{}", stderr(&out));
    let changed = std::fs::read(&img).unwrap();
    let restore = |image: &Path, fault: Option<u32>| {
        let mut c = nbdcrypt();
        c.arg("header-restore")
            .arg(image)
            .arg("--header-backup-file")
            .arg(&damaged);
        if let Some(n) = fault {
            c.env("NBDCRYPT_FAULT_STEP", n.to_string());
        }
        run(&mut c)
    };
    // The keyslots area is written in 1 MiB pieces, one step each, then synced.
    let keyslot_steps = ((16u32 << 20) - 32768).div_ceil(1 << 20) + 1;
    let mut step = 1;
    loop {
        let one = dir.path().join(format!("stop{step}.img"));
        std::fs::write(&one, &changed).unwrap();
        let out = restore(&one, Some(step));
        if out.status.success() {
            assert!(step > keyslot_steps + 4, "finished after {step} steps");
            break;
        }
        assert!(stderr(&out).contains("fault injection"), "{}", stderr(&out));
        if step > keyslot_steps {
            // Keyslots area and the first header copy are on disk: the backup's header wins.
            let o = test_passphrase(&one, &k0, &[]);
            assert_eq!(o.status.code(), Some(0), "stop {step}: {}", stderr(&o));
        }
        let again = restore(&one, None);
        assert!(again.status.success(), "stop {step}: {}", stderr(&again));
        let o = test_passphrase(&one, &k0, &[]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "re-run after stop {step}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
        step += 1;
    }
    // The finished restore: the backup's passphrase opens, no damaged copy was written.
    let out = restore(&img, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = test_passphrase(&img, &k0, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    assert_eq!(test_passphrase(&img, &k1, &[]).status.code(), Some(2));
    assert_eq!(cryptsetup_test_passphrase(&img, &k0).status.code(), Some(0));
}

/// Header changes of a served image are refused as busy (exit 5) and change nothing; a file
/// without a LUKS header is not overwritten by a restore without confirmation.
#[test]
fn header_commands_respect_locks_and_ask() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("b.img");
    format_cheap(&img, &key, "20M", 512, "pbkdf2");
    let bak = dir.path().join("b.bak");
    ok(nbdcrypt()
        .arg("header-backup")
        .arg(&img)
        .arg("--header-backup-file")
        .arg(&bak));
    let before = std::fs::read(&img).unwrap();
    let mut srv = Server::start(&img, &key, &[]);
    for args in [
        vec!["erase", "--batch-mode"],
        vec!["repair"],
        vec![
            "header-restore",
            "--batch-mode",
            "--header-backup-file",
            bak.to_str().unwrap(),
        ],
    ] {
        let out = ours(&args, &img);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
    }
    let (st, _) = srv.stop();
    assert!(st.success());
    assert!(std::fs::read(&img).unwrap() == before);

    let plain = dir.path().join("plain.img");
    let data = pattern(20 << 20, 4);
    std::fs::write(&plain, &data).unwrap();
    let out = ours(
        &[
            "header-restore",
            "--header-backup-file",
            bak.to_str().unwrap(),
        ],
        &plain,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds no valid LUKS2 header"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&plain).unwrap() == data);
}
