//! Detached headers (`--header FILE`, format-spec.md §1.1) on the header commands and `serve`:
//! each change made through the header file is seen by cryptsetup with the same `--header`,
//! header backups are byte for byte cryptsetup's, and a detached header given as the image is
//! refused with a hint.

use crate::common;

use common::*;
use std::path::Path;

fn cs_test(img: &Path, hdr: &Path, key: &Path) -> bool {
    cryptsetup_test_passphrase_header(img, hdr, key)
        .status
        .success()
}

#[test]
fn keyslot_commands_and_backups_through_a_detached_header() {
    let dir = tempdir();
    let d = dir.path();
    let key = key_file(d);
    let (img, hdr) = format_detached(d, "v");
    let h = hdr.to_str().unwrap();
    let data_before = std::fs::read(&img).unwrap();

    // add-key, then cryptsetup opens with the new passphrase through the same header.
    let key2 = d.join("key2");
    std::fs::write(&key2, b"second passphrase").unwrap();
    ok(nbdcrypt()
        .arg("add-key")
        .arg(&img)
        .args(["--header", h, "--key-file"])
        .arg(&key)
        .arg("--new-keyfile")
        .arg(&key2)
        .args(cheap_kdf_args("pbkdf2"))
        .args(["--pbkdf", "pbkdf2"]));
    assert!(cs_test(&img, &hdr, &key2));
    assert!(test_passphrase(&img, &key2, &["--header", h])
        .status
        .success());
    // Without --header the data file has no header at all.
    let out = test_passphrase(&img, &key2, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // ... and the header file alone is refused with a hint at --header.
    let out = test_passphrase(&hdr, &key2, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--header"), "{}", stderr(&out));

    // header-backup is cryptsetup's luksHeaderBackup byte for byte.
    let ours = d.join("ours.bak");
    let theirs = d.join("theirs.bak");
    ok(nbdcrypt()
        .arg("header-backup")
        .arg(&img)
        .args(["--header", h, "--header-backup-file"])
        .arg(&ours));
    ok(cryptsetup()
        .args(["luksHeaderBackup", "--header-backup-file"])
        .arg(&theirs)
        .arg("--header")
        .arg(&hdr)
        .arg(&img));
    assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap());

    // kill-slot 1 (the second passphrase) through the header: cryptsetup no longer opens with it.
    ok(nbdcrypt()
        .arg("kill-slot")
        .arg(&img)
        .arg("1")
        .args(["--header", h, "--key-file"])
        .arg(&key));
    assert!(!cs_test(&img, &hdr, &key2));
    assert!(cs_test(&img, &hdr, &key));

    // erase, then restore cryptsetup's backup (taken with both slots) through --header.
    ok(nbdcrypt()
        .arg("erase")
        .arg(&img)
        .args(["--header", h, "--batch-mode"]));
    assert!(!cs_test(&img, &hdr, &key));
    ok(nbdcrypt()
        .arg("header-restore")
        .arg(&img)
        .args(["--header", h, "--header-backup-file"])
        .arg(&theirs));
    assert!(cs_test(&img, &hdr, &key));
    assert!(cs_test(&img, &hdr, &key2));
    ok(nbdcrypt().arg("repair").arg(&img).args(["--header", h]));

    // None of it touched the data file.
    assert!(std::fs::read(&img).unwrap() == data_before);
    let dump = ok(nbdcrypt().arg("dump").arg(&img).args(["--header", h]));
    assert!(dump.contains("offset: 0 [bytes]"), "{dump}");
    // `dump HEADER` alone works as `cryptsetup luksDump HEADER`, line for line.
    assert_eq!(
        ok(nbdcrypt().arg("dump").arg(&hdr)),
        ok(cryptsetup().arg("luksDump").arg(&hdr))
    );
    let doc: serde_json::Value =
        serde_json::from_str(&ok(nbdcrypt().args(["dump", "--json"]).arg(&hdr))).unwrap();
    assert!(doc["segments"][0]["size"].is_null());
    assert_eq!(doc["segments"][0]["offset"], 0);
}

#[test]
fn serve_takes_a_header_per_export() {
    let dir = tempdir();
    let d = dir.path();
    let key = key_file(d);
    let (img, hdr) = format_detached(d, "a");
    let plain = d.join("b.img");
    format_cheap(&plain, &key, "24M", 512, "pbkdf2");
    let srv = Server::serve(
        &[("a", &img, &key), ("b", &plain, &key)],
        &["--header", &format!("a={}", hdr.display())],
    );
    // Export a is the whole 8 MiB data file; b is 24 MiB minus its 16 MiB header.
    for (name, size) in [("a", 8u64 << 20), ("b", 8 << 20)] {
        let out = ok(nbd_tool("nbdinfo").args(["--size", &srv.uri_for(name)]));
        assert_eq!(out.trim(), size.to_string(), "export {name}");
    }
    drop(srv);
    // A header for an export that does not exist is refused.
    let out = run(nbdcrypt()
        .arg("serve")
        .arg(format!("--export=a={}", img.display()))
        .arg(format!("--header=c={}", hdr.display())));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--header"), "{}", stderr(&out));
}
