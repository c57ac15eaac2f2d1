//! Interop with cryptsetup 2.6 on image files (no device-mapper needed): volumes we format are
//! cryptsetup's, volumes cryptsetup formats are ours, and `dump` prints what `luksDump` prints.

mod common;

use common::*;
use std::process::Command;

fn cryptsetup() -> Command {
    Command::new(require("cryptsetup", "cryptsetup-bin"))
}

fn wrong_key(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("wrong");
    std::fs::write(&p, b"not the passphrase").unwrap();
    p
}

/// Our `format` → `cryptsetup luksDump` accepts it and `open --test-passphrase` takes the right
/// passphrase (exit 0) and refuses a wrong one (exit 2), for every KDF and both sector sizes.
#[test]
fn our_format_is_cryptsetups() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let bad = wrong_key(dir.path());
    for (pbkdf, sector) in [
        ("argon2id", 512),
        ("argon2i", 4096),
        ("pbkdf2", 4096),
        ("pbkdf2", 512),
    ] {
        let img = dir.path().join(format!("{pbkdf}-{sector}.img"));
        format_cheap(&img, &key, "20M", sector, pbkdf);
        let dump = ok(cryptsetup().arg("luksDump").arg(&img));
        assert!(dump.contains("Version:       \t2"), "{dump}");
        assert!(
            dump.contains(&format!("sector: {sector} [bytes]")),
            "{dump}"
        );
        assert!(dump.contains(&format!("PBKDF:      {pbkdf}")), "{dump}");
        assert!(dump.contains("cipher: aes-xts-plain64"), "{dump}");
        assert!(dump.contains("AF stripes: 4000"), "{dump}");
        let good = run(cryptsetup()
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&key)
            .arg(&img));
        assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
        let wrong = run(cryptsetup()
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&bad)
            .arg(&img));
        assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
        // cryptsetup's own consistency checker agrees.
        let repair = run(cryptsetup().args(["repair", "--batch-mode"]).arg(&img));
        assert_eq!(repair.status.code(), Some(0), "{}", stderr(&repair));
    }
}

/// cryptsetup's `luksFormat` (argon2id/argon2i/pbkdf2, sector 512 and 4096) → our
/// `test-passphrase` opens it with the right passphrase and says exit 2 to a wrong one. This
/// runs our KDFs, AF merge and digest against cryptsetup's bytes.
#[test]
fn cryptsetup_format_is_ours() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let bad = wrong_key(dir.path());
    for (pbkdf, sector) in [
        ("argon2id", 512),
        ("argon2id", 4096),
        ("argon2i", 512),
        ("argon2i", 4096),
        ("pbkdf2", 512),
        ("pbkdf2", 4096),
    ] {
        let img = dir.path().join(format!("cs-{pbkdf}-{sector}.img"));
        cryptsetup_format(&img, &key, 20 << 20, sector, pbkdf);
        let good = run(nbdcrypt()
            .arg("test-passphrase")
            .arg(&img)
            .arg("--key-file")
            .arg(&key));
        assert_eq!(
            good.status.code(),
            Some(0),
            "{pbkdf}/{sector}: {}",
            stderr(&good)
        );
        let wrong = run(nbdcrypt()
            .arg("test-passphrase")
            .arg(&img)
            .arg("--key-file")
            .arg(&bad));
        assert_eq!(
            wrong.status.code(),
            Some(2),
            "{pbkdf}/{sector}: {}",
            stderr(&wrong)
        );
        assert!(stderr(&wrong).contains("No key available with this passphrase"));
    }
}

/// `nbdcrypt dump` prints what `cryptsetup luksDump` prints, line for line, for a volume made
/// by each tool.
#[test]
fn dump_matches_luksdump() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let a = dir.path().join("cs.img");
    cryptsetup_format(&a, &key, 20 << 20, 4096, "argon2id");
    ok(cryptsetup()
        .args(["config", "--label", "mylabel", "--subsystem", "mysub"])
        .arg(&a));
    let b = dir.path().join("ours.img");
    format_cheap(&b, &key, "20M", 512, "pbkdf2");
    for img in [&a, &b] {
        let theirs = ok(cryptsetup().arg("luksDump").arg(img));
        let ours = ok(nbdcrypt().arg("dump").arg(img));
        assert_eq!(ours, theirs, "dump of {}", img.display());
    }
    // --json prints the JSON metadata with the same content as cryptsetup's.
    let theirs: serde_json::Value = serde_json::from_str(&ok(cryptsetup()
        .args(["luksDump", "--dump-json-metadata"])
        .arg(&a)))
    .unwrap();
    let ours: serde_json::Value =
        serde_json::from_str(&ok(nbdcrypt().args(["dump", "--json"]).arg(&a))).unwrap();
    assert_eq!(ours, theirs);
}
