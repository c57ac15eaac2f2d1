//! Interop with cryptsetup 2.6 on image files (no device-mapper needed): volumes we format are
//! cryptsetup's, volumes cryptsetup formats are ours, and `dump` prints what `luksDump` prints.

use crate::common;

use common::*;

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
        let good = cryptsetup_test_passphrase(&img, &key);
        assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
        let wrong = cryptsetup_test_passphrase(&img, &bad);
        assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
        // cryptsetup's own consistency checker finds nothing to repair.
        let before = std::fs::read(&img).unwrap();
        let repair = run(cryptsetup().args(["repair", "--batch-mode"]).arg(&img));
        assert_eq!(repair.status.code(), Some(0), "{}", stderr(&repair));
        assert!(
            std::fs::read(&img).unwrap() == before,
            "cryptsetup repair changed {pbkdf}/{sector}"
        );
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
    ok(cryptsetup()
        .args([
            "token",
            "add",
            "--key-description",
            "mykey",
            "--key-slot",
            "0",
        ])
        .arg(&a));
    let tok = dir.path().join("tok.json");
    std::fs::write(
        &tok,
        r#"{"type":"nbd-escrow","keyslots":["0"],"url":"https://x"}"#,
    )
    .unwrap();
    ok(cryptsetup()
        .args(["token", "import", "--json-file"])
        .arg(&tok)
        .arg(&a));
    let b = dir.path().join("ours.img");
    format_cheap(&b, &key, "20M", 512, "pbkdf2");
    for img in [&a, &b] {
        let theirs = ok(cryptsetup().arg("luksDump").arg(img));
        let ours = ok(nbdcrypt().arg("dump").arg(img));
        assert_eq!(ours, theirs, "dump of {}", img.display());
    }
    // --dump-json-metadata prints the JSON metadata with the same content as cryptsetup's,
    // and --json has it verbatim under "metadata".
    let theirs: serde_json::Value = serde_json::from_str(&ok(cryptsetup()
        .args(["luksDump", "--dump-json-metadata"])
        .arg(&a)))
    .unwrap();
    let ours: serde_json::Value = serde_json::from_str(&ok(nbdcrypt()
        .args(["dump", "--dump-json-metadata"])
        .arg(&a)))
    .unwrap();
    assert_eq!(ours, theirs);
    let doc: serde_json::Value =
        serde_json::from_str(&ok(nbdcrypt().args(["dump", "--json"]).arg(&a))).unwrap();
    assert_eq!(doc["metadata"], theirs);
}

/// `--key-slot` and keyslot priorities behave as cryptsetup's: a named slot is the only one
/// tried, an inactive one is "No usable keyslot" (exit 1), `ignore` slots are skipped unless
/// named.
#[test]
fn keyslot_selection_and_priority() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let key2 = dir.path().join("key2");
    std::fs::write(&key2, b"second passphrase").unwrap();
    let img = dir.path().join("two.img");
    format_cheap(&img, &key, "20M", 512, "pbkdf2");
    ok(cryptsetup()
        .args([
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ])
        .arg("--key-file")
        .arg(&key)
        .arg(&img)
        .arg(&key2));
    let out = test_passphrase(&img, &key2, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Key slot 1 unlocked."),
        "{}",
        stderr(&out)
    );
    let out = test_passphrase(&img, &key2, &["--key-slot", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = test_passphrase(&img, &key2, &["--key-slot", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = test_passphrase(&img, &key2, &["--key-slot", "5"]);
    assert_eq!(out.status.code(), Some(1), "slot 5: {}", stderr(&out));
    assert!(
        stderr(&out).contains("No usable keyslot"),
        "{}",
        stderr(&out)
    );
    // Beyond LUKS2's 32 keyslots: a usage error, as cryptsetup's "Key slot 40 is invalid".
    let out = test_passphrase(&img, &key2, &["--key-slot", "40"]);
    assert_eq!(out.status.code(), Some(1), "slot 40: {}", stderr(&out));
    assert!(
        stderr(&out).contains("out of range 0-31"),
        "{}",
        stderr(&out)
    );
    ok(cryptsetup()
        .args(["config", "--priority", "ignore", "--key-slot", "1"])
        .arg(&img));
    let out = test_passphrase(&img, &key2, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "ignored slot tried: {}",
        stderr(&out)
    );
    let out = test_passphrase(&img, &key2, &["--key-slot", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The same answers from cryptsetup itself.
    let cs = cryptsetup_test_passphrase(&img, &key2);
    assert_eq!(cs.status.code(), Some(2), "{}", stderr(&cs));
}

/// Passphrase sources mean the same bytes as in cryptsetup: one line of a non-terminal stdin
/// without its newline; `--key-file -` all of stdin, byte for byte.
#[test]
fn passphrase_sources_match_cryptsetup() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempdir();
    let pipe = |args: &[&str], img: &std::path::Path, input: &[u8]| {
        let mut child = nbdcrypt()
            .args(args)
            .arg(img)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    let cheap = [
        "format",
        "--size",
        "20M",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
    ];
    let a = dir.path().join("line.img");
    pipe(&cheap, &a, b"line secret\nignored second line\n");
    let b = dir.path().join("dash.img");
    let mut args = cheap.to_vec();
    args.extend(["--key-file", "-"]);
    pipe(&args, &b, b"all\nof stdin\n");
    for (img, bytes, wrong) in [
        (&a, &b"line secret"[..], &b"line secret\n"[..]),
        (&b, &b"all\nof stdin\n"[..], &b"all"[..]),
    ] {
        let k = dir.path().join("k");
        std::fs::write(&k, bytes).unwrap();
        let cs = cryptsetup_test_passphrase(img, &k);
        assert_eq!(
            cs.status.code(),
            Some(0),
            "{}: {}",
            img.display(),
            stderr(&cs)
        );
        std::fs::write(&k, wrong).unwrap();
        let cs = cryptsetup_test_passphrase(img, &k);
        assert_eq!(
            cs.status.code(),
            Some(2),
            "{}: {}",
            img.display(),
            stderr(&cs)
        );
    }
    // And unlocking with one stdin line works the same way.
    pipe(&["test-passphrase"], &a, b"line secret\n");
}

/// At a terminal: `format` asks twice and refuses a mismatch (creating nothing); unlocking
/// allows three tries; the typed passphrase is the one cryptsetup accepts.
#[test]
fn terminal_prompts() {
    let dir = tempdir();
    let img = dir.path().join("tty.img");
    let fmt = format!(
        "format {} --size 20M --pbkdf pbkdf2 --pbkdf-force-iterations 1000",
        img.display()
    );
    let out = on_terminal(&fmt, "one\ntwo\n");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Verify passphrase:") && text.contains("passphrases do not match"),
        "{text}"
    );
    assert!(!img.exists(), "a refused format must not create the image");

    let out = on_terminal(&fmt, "tty secret\ntty secret\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let k = dir.path().join("k");
    std::fs::write(&k, b"tty secret").unwrap();
    let cs = cryptsetup_test_passphrase(&img, &k);
    assert_eq!(cs.status.code(), Some(0), "{}", stderr(&cs));

    let test = format!("test-passphrase {}", img.display());
    let out = on_terminal(&test, "bad\nworse\ntty secret\n");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.matches("Enter passphrase for").count(), 3, "{text}");
    let out = on_terminal(&test, "bad\nbad\nbad\ntty secret\n");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "three tries only: {text}");
}
