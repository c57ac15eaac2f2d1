//! Unlock through the key service (`nbdcrypt-keyd`, docs/keyservice-api.md) after a KEK
//! rotation: `open` rewraps the token to the current version in the header (also through a
//! detached header and when serving read-only), a busy header leaves the old token with a
//! warning, and `serve` unlocks several exports through the service.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::keyd::Keyd;
use common::Server;
use common::{cryptsetup, format_cheap, key_file, nbd_tool, nbdcrypt, ok, run, stderr, tempdir};
use serde_json::Value;

/// A key service with KEK `k1` and host `hostA`, serving.
fn service(dir: &Path) -> Keyd {
    let mut k = Keyd::init(dir);
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.serve();
    k
}

/// `add-key IMAGE [--header H] --key-file KEY --key-service URL --kek k1` as hostA.
fn add_service_key(k: &Keyd, image: &Path, header: Option<&Path>, key: &Path) {
    let mut c = nbdcrypt();
    c.arg("add-key").arg(image).arg("--key-file").arg(key);
    if let Some(h) = header {
        c.arg("--header").arg(h);
    }
    c.args(["--key-service", &k.url, "--kek", "k1"])
        .args(k.host_args("hostA"));
    ok(&mut c);
}

/// `open IMAGE [extra] --socket IMAGE.sock` as hostA, no passphrase.
fn open_cmd(k: &Keyd, image: &Path, extra: &[&str]) -> (Command, PathBuf) {
    let socket = image.with_extension("sock");
    let mut c = nbdcrypt();
    c.arg("open")
        .arg(image)
        .args(extra)
        .arg("--socket")
        .arg(&socket)
        .args(k.host_args("hostA"));
    (c, socket)
}

/// Opens through the service, checks that a client sees the export, stops; the stderr.
fn open_and_stop(k: &Keyd, image: &Path, extra: &[&str]) -> String {
    let (c, socket) = open_cmd(k, image, extra);
    let export = image.file_stem().unwrap().to_string_lossy().into_owned();
    let mut s = Server::launch(c, socket, export);
    let info = nbd_tool("nbdinfo")
        .args(["--size", &s.uri()])
        .output()
        .unwrap();
    assert!(info.status.success(), "{info:?}");
    let (st, err) = s.stop();
    assert!(st.success(), "{err}");
    err
}

/// Token 0 of the header in `file` (an image or a detached header), as cryptsetup exports it.
fn token0(file: &Path) -> Value {
    serde_json::from_str(&ok(cryptsetup()
        .args(["token", "export", "--token-id", "0"])
        .arg(file)))
    .unwrap()
}

/// `kek show k1`: keyslots per version, from version 1.
fn keyslots_per_version(k: &Keyd) -> Vec<i64> {
    let show: Value = serde_json::from_str(&k.admin(&["kek", "show", "k1"])).unwrap();
    show["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["keyslots"].as_i64().unwrap())
        .collect()
}

#[test]
fn open_rewraps_an_old_kek_version_so_retiring_it_keeps_the_volume_openable() {
    let dir = tempdir();
    let k = service(dir.path());
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    add_service_key(&k, &image, None, &key);
    let before = token0(&image);
    assert_eq!(before["kek_version"], 1);
    // A copy made now keeps the version-1 token: it shows what happens without the rewrap.
    let stale = dir.path().join("stale.img");
    std::fs::copy(&image, &stale).unwrap();

    k.admin(&["kek", "rotate", "k1"]);
    assert_eq!(keyslots_per_version(&k), [1, 0]);
    let err = open_and_stop(&k, &image, &[]);
    assert!(!err.contains("rewrapping"), "{err}");

    // The token is now at version 2 with a new blob; cryptsetup still validates the header
    // and the passphrase keyslot is untouched.
    let after = token0(&image);
    assert_eq!(after["kek_version"], 2, "{after}");
    assert_ne!(after["blob"], before["blob"]);
    assert_eq!(after["keyslots"], before["keyslots"]);
    assert_eq!(after["urls"], before["urls"]);
    ok(cryptsetup().arg("luksDump").arg(&image));
    assert!(common::cryptsetup_test_passphrase(&image, &key)
        .status
        .success());
    let dump: Value =
        serde_json::from_str(&ok(nbdcrypt().arg("dump").arg("--json").arg(&image))).unwrap();
    assert!(dump.to_string().contains("\"kek_version\":2"), "{dump}");
    // The service saw the rewrap: the keyslot moved to version 2, with its audit row.
    assert_eq!(keyslots_per_version(&k), [0, 1]);
    assert!(k.audit_rows().iter().any(|r| r["action"] == "wrap"
        && r["outcome"] == "ok"
        && r["actor"] == "host:hostA"
        && r["detail"] == "keyslot 1 KEK k1 version 2"));

    // Version 1 retired: the rewrapped volume still opens through the service ...
    k.admin(&["kek", "set", "k1", "--min-unwrap-version", "2"]);
    open_and_stop(&k, &image, &[]);
    // ... and the copy that was not rewrapped is refused (exit 2, the refusal named).
    let (mut c, _) = open_cmd(&k, &stale, &[]);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("403 version-retired"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rewrap_through_a_detached_header_read_only_needs_a_free_header() {
    let dir = tempdir();
    let k = service(dir.path());
    let (img, hdr) = common::format_detached(dir.path(), "data");
    let key = key_file(dir.path());
    add_service_key(&k, &img, Some(&hdr), &key);
    k.admin(&["kek", "rotate", "k1"]);
    let h = hdr.to_str().unwrap();

    // Another process reads the header under a shared flock (as cryptsetup does): the volume
    // opens through the service, the header is not written, and a warning says so.
    let holder = std::fs::File::open(&hdr).unwrap();
    holder.lock_shared().unwrap();
    let err = open_and_stop(&k, &img, &["--header", h, "--read-only"]);
    assert!(err.contains("rewrapping the key-service token"), "{err}");
    assert!(
        err.contains("busy") || err.contains("Busy") || err.contains("in use"),
        "{err}"
    );
    assert_eq!(token0(&hdr)["kek_version"], 1);
    drop(holder);

    // With the header free, a read-only open rewraps through the detached header.
    let err = open_and_stop(&k, &img, &["--header", h, "--read-only"]);
    assert!(!err.contains("rewrapping"), "{err}");
    assert_eq!(token0(&hdr)["kek_version"], 2);
    ok(cryptsetup().arg("luksDump").arg(&hdr));
    assert!(common::cryptsetup_test_passphrase_header(&img, &hdr, &key)
        .status
        .success());
    assert_eq!(keyslots_per_version(&k), [0, 1]);
    k.admin(&["kek", "set", "k1", "--min-unwrap-version", "2"]);
    open_and_stop(&k, &img, &["--header", h]);
}

#[test]
fn serve_unlocks_every_export_through_the_service() {
    let dir = tempdir();
    let k = service(dir.path());
    let key = key_file(dir.path());
    let mut uuids = Vec::new();
    for name in ["a", "b"] {
        let image = dir.path().join(format!("{name}.img"));
        format_cheap(&image, &key, "20M", 512, "pbkdf2");
        add_service_key(&k, &image, None, &key);
        uuids.push(
            ok(cryptsetup().arg("luksUUID").arg(&image))
                .trim()
                .to_string(),
        );
    }
    let socket = dir.path().join("serve.sock");
    let mut c = nbdcrypt();
    c.arg("serve");
    for name in ["a", "b"] {
        c.arg("--export").arg(format!(
            "{name}={}",
            dir.path().join(format!("{name}.img")).display()
        ));
    }
    c.arg("--socket").arg(&socket).args(k.host_args("hostA"));
    let mut s = Server::launch(c, socket, "a".into());
    for name in ["a", "b"] {
        let info = nbd_tool("nbdinfo")
            .args(["--size", &s.uri_for(name)])
            .output()
            .unwrap();
        assert!(info.status.success(), "{name}: {info:?}");
        assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "4194304");
    }
    let (st, err) = s.stop();
    assert!(st.success(), "{err}");
    let rows = k.audit_rows();
    for uuid in &uuids {
        assert!(
            rows.iter().any(|r| r["action"] == "unwrap"
                && r["outcome"] == "ok"
                && r["target"] == uuid.as_str()),
            "no unwrap of {uuid}"
        );
    }
}
