//! The key service `nbdcrypt-keyd` as a real process on loopback, driven with `curl`
//! (docs/keyservice-api.md): refusals with their status and audit row, restart, `kill -9`
//! during a burst of wraps, and `audit verify` against a row edited with `sqlite3`; and the
//! volume CLI against it: `add-key --key-service`, unlock through the service, escrow
//! (`escrow`, `format --escrow`, `recovery-key add --escrow`) and `recover`.
//!
//! Over 800 lines: one service started per test with its hosts, tokens and officers; the
//! refusal table and routes are unit-tested in the key-service crate, this is the end to end.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::keyd::{age_decrypt, keyd, Keyd, Reply};
use common::{require, run, tempdir};
use serde_json::{json, Value};

const VOL_A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const VOL_A2: &str = "0a1b2c3d-0000-4000-8000-0000000000a2";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Checks a refusal: status, problem type, problem+json, and that its audit row says so.
fn refused(k: &Keyd, r: &Reply, status: u16, kind: &str, actor: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.content_type, "application/problem+json", "{r:?}");
    assert_eq!(r.body["type"], format!("urn:nbdcrypt:keyd:{kind}"), "{r:?}");
    assert_eq!(r.body["status"], status);
    let seq = r.body["audit_seq"]
        .as_i64()
        .expect("refusal names its audit row");
    let rows = k.audit_rows();
    let row = rows
        .iter()
        .find(|row| row["seq"] == seq)
        .unwrap_or_else(|| panic!("no audit row {seq}"));
    assert_eq!(row["outcome"], format!("refused {status}: {kind}"), "{row}");
    assert_eq!(row["actor"], actor, "{row}");
}

fn wrap(k: &Keyd, host: &str, vol: &str, slot: u32) -> Reply {
    k.as_host(
        host,
        "POST",
        &format!("/v1/volumes/{vol}/wrap"),
        &json!({"slot": slot, "kek": "k1", "secret": b64(SECRET)}),
    )
}

fn unwrap(k: &Keyd, host: &str, vol: &str, slot: u32, version: u64, blob: &Value) -> Reply {
    k.as_host(
        host,
        "POST",
        &format!("/v1/volumes/{vol}/unwrap"),
        &json!({"slot": slot, "kek": "k1", "version": version, "blob": blob}),
    )
}

fn setup() -> (tempfile::TempDir, Keyd) {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.host("hostB");
    k.serve();
    for (host, vol) in [("hostA", VOL_A), ("hostA", VOL_A2)] {
        let r = k.as_host(host, "POST", "/v1/volumes", &json!({ "uuid": vol }));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["owner"], host);
    }
    (dir, k)
}

#[test]
fn refusals_have_their_status_and_audit_row() {
    let (_dir, k) = setup();
    let officer = k.token("olga", "officer");
    let auditor = k.token("audrey", "auditor");

    let w = wrap(&k, "hostA", VOL_A, 1);
    assert_eq!(w.status, 200, "{w:?}");
    assert_eq!(w.body["version"], 1);
    let blob = w.body["blob"].clone();
    let ok = unwrap(&k, "hostA", VOL_A, 1, 1, &blob);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body["secret"], b64(SECRET));
    let unwrap_path = format!("/v1/volumes/{VOL_A}/unwrap");

    // No client certificate and no token.
    let r = k.curl(&unwrap_path, &["-X", "POST", "--data-binary", "{}"]);
    refused(&k, &r, 401, "no-credentials", "anonymous");
    // A wrong token.
    let r = k.with_token("nbk_wrong", "POST", &unwrap_path, &json!({}));
    refused(&k, &r, 401, "bad-token", "anonymous");
    // Host B asks to unwrap host A's volume, and to register it.
    let r = unwrap(&k, "hostB", VOL_A, 1, 1, &blob);
    refused(&k, &r, 403, "not-owner", "host:hostB");
    let r = k.as_host("hostB", "POST", "/v1/volumes", &json!({ "uuid": VOL_A }));
    refused(&k, &r, 409, "not-owner", "host:hostB");
    // The blob moved to another keyslot, and to another volume.
    let r = unwrap(&k, "hostA", VOL_A, 2, 1, &blob);
    refused(&k, &r, 422, "binding", "host:hostA");
    let r = unwrap(&k, "hostA", VOL_A2, 1, 1, &blob);
    refused(&k, &r, 422, "binding", "host:hostA");
    // An unknown KEK version.
    let r = unwrap(&k, "hostA", VOL_A, 1, 7, &blob);
    refused(&k, &r, 404, "unknown-kek-version", "host:hostA");
    // A version below min-unwrap-version: rotate, wrap with v2, retire v1.
    k.admin(&["kek", "rotate", "k1"]);
    let w2 = wrap(&k, "hostA", VOL_A, 1);
    assert_eq!(w2.body["version"], 2, "{w2:?}");
    let r = unwrap(&k, "hostA", VOL_A, 1, 1, &blob);
    assert_eq!(
        r.status, 200,
        "v1 still unwraps before min-unwrap-version: {r:?}"
    );
    assert_eq!(r.body["current_version"], 2);
    k.admin(&["kek", "set", "k1", "--min-unwrap-version", "2"]);
    let r = unwrap(&k, "hostA", VOL_A, 1, 1, &blob);
    refused(&k, &r, 403, "version-retired", "host:hostA");
    let r = unwrap(&k, "hostA", VOL_A, 1, 2, &w2.body["blob"]);
    assert_eq!(r.status, 200, "{r:?}");
    let show: Value = serde_json::from_str(&k.admin(&["kek", "show", "k1"])).unwrap();
    assert_eq!(show["current"], 2);
    assert_eq!(show["min_unwrap_version"], 2);
    assert_eq!(show["versions"][1]["keyslots"], 1, "{show}");
    // An officer asks to unwrap.
    let r = k.with_token(
        &officer,
        "POST",
        &unwrap_path,
        &json!({"slot": 1, "kek": "k1", "version": 2, "blob": w2.body["blob"]}),
    );
    refused(&k, &r, 403, "hosts-only", "token:olga(officer)");
    // A host asks for an escrow package; the officer may fetch it.
    let escrow = format!("/v1/volumes/{VOL_A}/escrow");
    let pkg = "-----BEGIN AGE ENCRYPTED FILE-----\nnot really\n-----END AGE ENCRYPTED FILE-----\n";
    let r = k.as_host("hostA", "PUT", &escrow, &json!({ "package": pkg }));
    assert_eq!(r.status, 200, "{r:?}");
    let r = k.get_as_host("hostA", &escrow);
    refused(&k, &r, 403, "role", "host:hostA");
    let r = k.with_token(&officer, "GET", &escrow, &Value::Null);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["package"], pkg);
    // The auditor reads the log but cannot fetch escrow.
    let r = k.with_token(&auditor, "GET", &escrow, &Value::Null);
    refused(&k, &r, 403, "role", "token:audrey(auditor)");
    let r = k.with_token(&auditor, "GET", "/v1/audit/verify", &Value::Null);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["ok"], true, "{r:?}");
    // Revoking host A takes effect at the next request, on the running server.
    k.admin(&["host", "revoke", "hostA"]);
    let r = unwrap(&k, "hostA", VOL_A, 1, 2, &w2.body["blob"]);
    refused(&k, &r, 403, "host-revoked", "host:hostA");

    // Every release is in the log too, and the chain verifies.
    let rows = k.audit_rows();
    let released = rows
        .iter()
        .filter(|r| r["action"] == "unwrap" && r["outcome"] == "ok")
        .count();
    assert_eq!(released, 3);
    assert!(rows
        .iter()
        .any(|r| r["action"] == "escrow-fetch" && r["actor"] == "token:olga(officer)"));
    assert!(k.admin(&["audit", "verify"]).contains("audit chain ok"));
}

#[test]
fn restart_and_kill9_during_a_burst_keep_every_acknowledged_wrap() {
    let (_dir, k) = setup();
    let auditor = k.token("audrey", "auditor");
    // Two clients wrap keyslots as fast as they can; the server is killed with SIGKILL after
    // 30 acknowledged wraps, while requests are still in flight.
    let acked: Arc<Mutex<BTreeMap<u32, Value>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let k = Arc::new(Mutex::new(k));
    let (url, data, dir) = {
        let g = k.lock().unwrap();
        (g.url.clone(), g.data.clone(), g.dir.clone())
    };
    let clients: Vec<_> = (0..2u32)
        .map(|c| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let probe = Keyd {
                dir: dir.clone(),
                data: data.clone(),
                admin_token: String::new(),
                child: None,
                url: url.clone(),
            };
            std::thread::spawn(move || {
                let mut slot = c * 1000;
                while !stop.load(Ordering::SeqCst) {
                    slot += 1;
                    let r = wrap(&probe, "hostA", VOL_A, slot);
                    if r.status == 200 {
                        acked.lock().unwrap().insert(slot, r.body["blob"].clone());
                    }
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let st = k.lock().unwrap().stop_with(libc::SIGKILL);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let mut k = Arc::into_inner(k).unwrap().into_inner().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30);

    // The chain verifies, and every acknowledged wrap has its row and still unwraps.
    assert!(k.admin(&["audit", "verify"]).contains("audit chain ok"));
    let rows = k.audit_rows();
    for slot in acked.keys() {
        let detail = format!("keyslot {slot} KEK k1 version 1");
        assert!(
            rows.iter()
                .any(|r| r["action"] == "wrap" && r["outcome"] == "ok" && r["detail"] == detail),
            "acknowledged wrap of keyslot {slot} has no audit row"
        );
    }
    k.serve();
    for (slot, blob) in acked.iter().take(40) {
        let r = unwrap(&k, "hostA", VOL_A, *slot, 1, blob);
        assert_eq!(r.status, 200, "keyslot {slot} after kill -9: {r:?}");
        assert_eq!(r.body["secret"], b64(SECRET));
    }
    // A clean restart keeps hosts, tokens, KEKs, volumes, escrow and the log.
    let escrow = format!("/v1/volumes/{VOL_A}/escrow");
    let pkg = "-----BEGIN AGE ENCRYPTED FILE-----\nx\n-----END AGE ENCRYPTED FILE-----\n";
    assert_eq!(
        k.as_host("hostA", "PUT", &escrow, &json!({ "package": pkg }))
            .status,
        200
    );
    let before = k.audit_rows().len();
    assert!(k.stop_with(libc::SIGTERM).success());
    k.serve();
    let (slot, blob) = acked.iter().next().unwrap();
    assert_eq!(unwrap(&k, "hostA", VOL_A, *slot, 1, blob).status, 200);
    let r = unwrap(&k, "hostB", VOL_A, *slot, 1, blob);
    refused(&k, &r, 403, "not-owner", "host:hostB");
    let officer = k.token("olga", "officer");
    let r = k.with_token(&officer, "GET", &escrow, &Value::Null);
    assert_eq!(r.body["package"], pkg, "{r:?}");
    let r = k.with_token(&auditor, "GET", "/v1/audit?limit=100000", &Value::Null);
    assert_eq!(r.status, 200);
    assert!(r.body["rows"].as_array().unwrap().len() > before);
    let r = k.with_token(&k.admin_token, "GET", "/v1/keks/k1", &Value::Null);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["current"], 1);
}

#[test]
fn audit_verify_names_a_row_edited_with_sqlite3() {
    let sqlite3 = require("sqlite3", "sqlite3");
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.admin(&["kek", "rotate", "k1"]);
    k.admin(&[
        "officer",
        "add",
        "olga",
        "age1ckmz0va5qgc9fa2esxs2kdlwmnw7ae2zz246qa7zcy34sg7p6gys065f3m",
    ]);
    // init, kek create, host add and kek rotate each write their row and a checkpoint (rows
    // 1 to 8; the kek-rotate row is 7), officer add its row.
    assert!(k.admin(&["audit", "verify"]).contains("ok: 9 rows"));
    let db = k.data.join("keyd.db");
    // The triggers refuse edits ...
    let out = run(Command::new(&sqlite3)
        .arg(&db)
        .arg("UPDATE audit SET detail = 'version 9' WHERE seq = 7;"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("append-only"),
        "{out:?}"
    );
    assert!(k.admin(&["audit", "verify"]).contains("ok: 9 rows"));
    // ... and an edit made anyway is found, by its sequence number.
    let out = run(Command::new(&sqlite3)
        .arg(&db)
        .arg("DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'version 9' WHERE seq = 7;"));
    assert!(out.status.success(), "{out:?}");
    let out = run(keyd()
        .arg("--data-dir")
        .arg(&k.data)
        .args(["audit", "verify"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit chain broken at row 7"), "{err}");
}

#[test]
fn passphrase_root_key_is_required_and_checked() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let good = dir.path().join("good");
    let bad = dir.path().join("bad");
    std::fs::write(&good, "root passphrase\n").unwrap();
    std::fs::write(&bad, "not it\n").unwrap();
    let d = data.to_str().unwrap();
    let out = run(keyd()
        .args(["--data-dir", d, "--root-passphrase-file"])
        .arg(&good)
        .arg("init"));
    assert!(out.status.success(), "{out:?}");
    assert!(!data.join("root.key").exists());
    let out = run(keyd().args(["--data-dir", d, "kek", "create", "k1"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root-passphrase-file"),
        "{out:?}"
    );
    let out = run(keyd()
        .args(["--data-dir", d, "--root-passphrase-file"])
        .arg(&bad)
        .args(["kek", "create", "k1"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{out:?}"
    );
    let out = run(keyd()
        .args(["--data-dir", d, "--root-passphrase-file"])
        .arg(&good)
        .args(["kek", "create", "k1"]));
    assert!(out.status.success(), "{out:?}");
    // The key-file store refuses a second init in the same directory.
    let out = run(keyd().args(["--data-dir", d, "init"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds"),
        "{out:?}"
    );
}

#[test]
fn add_key_through_the_service_keeps_the_volume_valid_for_cryptsetup() {
    use common::{
        cryptsetup, cryptsetup_test_passphrase, format_cheap, free_port, key_file, nbdcrypt, ok,
    };
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.host("hostB");
    k.serve();
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let ca = k.data.join("ca.pem");
    let add_key = |host: &str, urls: &[&str]| {
        let mut c = nbdcrypt();
        c.arg("add-key").arg(&image).arg("--key-file").arg(&key);
        for u in urls {
            c.args(["--key-service", u]);
        }
        c.args(["--kek", "k1", "--key-service-timeout", "5"])
            .arg("--key-service-cert")
            .arg(dir.path().join(host).join("host.pem"))
            .arg("--key-service-key")
            .arg(dir.path().join(host).join("host.key"))
            .arg("--key-service-ca")
            .arg(&ca);
        run(&mut c)
    };
    // The first endpoint refuses connections; the second wraps.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let out = add_key("hostA", &[&dead, &k.url]);
    assert!(out.status.success(), "{out:?}");
    // cryptsetup still accepts the volume and keeps the token.
    let dump = ok(cryptsetup().arg("luksDump").arg(&image));
    assert!(dump.contains("nbdcrypt-keyservice"), "{dump}");
    let token: Value = serde_json::from_str(&ok(cryptsetup()
        .args(["token", "export", "--token-id", "0"])
        .arg(&image)))
    .unwrap();
    assert_eq!(token["type"], "nbdcrypt-keyservice");
    assert_eq!(token["keyslots"], json!(["1"]));
    assert_eq!(token["urls"], json!([dead, k.url]));
    assert_eq!(token["kek"], "k1");
    assert_eq!(token["kek_version"], 1);
    // The service unwraps the blob for this volume and slot, and the secret opens keyslot 1
    // in cryptsetup; the old passphrase still works.
    let uuid = ok(cryptsetup().arg("luksUUID").arg(&image))
        .trim()
        .to_string();
    let r = unwrap(&k, "hostA", &uuid, 1, 1, &token["blob"]);
    assert_eq!(r.status, 200, "{r:?}");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(r.body["secret"].as_str().unwrap())
        .unwrap();
    assert_eq!(secret.len(), 32);
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let out = cryptsetup_test_passphrase(&image, &secret_file);
    assert!(out.status.success(), "{out:?}");
    assert!(cryptsetup_test_passphrase(&image, &key).status.success());
    let rows = k.audit_rows();
    assert!(rows.iter().any(|r| r["action"] == "register"
        && r["target"] == uuid.as_str()
        && r["actor"] == "host:hostA"));
    // Another host cannot add a service keyslot to host A's volume; the header is unchanged.
    let out = add_key("hostB", &[&k.url]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = common::stderr(&out);
    assert!(err.contains("409 not-owner"), "{err}");
    let dump2 = ok(cryptsetup().arg("luksDump").arg(&image));
    assert_eq!(dump, dump2);
}

#[test]
fn open_unlocks_through_the_service_past_a_silent_and_a_refusing_endpoint() {
    use common::{format_cheap, free_port, key_file, nbdcrypt, Server};
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    k.serve();
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    // First endpoint: accepts TCP but never answers; second: connection refused; third: works.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://{}", silent.local_addr().unwrap());
    let refusing = format!("https://127.0.0.1:{}", free_port());
    let ca = k.data.join("ca.pem");
    let identity = |c: &mut Command| {
        c.arg("--key-service-cert")
            .arg(dir.path().join("hostA").join("host.pem"))
            .arg("--key-service-key")
            .arg(dir.path().join("hostA").join("host.key"))
            .arg("--key-service-ca")
            .arg(&ca)
            .args(["--key-service-timeout", "2"]);
    };
    let mut c = nbdcrypt();
    c.arg("add-key").arg(&image).arg("--key-file").arg(&key);
    for u in [&silent_url, &refusing, &k.url] {
        c.args(["--key-service", u]);
    }
    c.args(["--kek", "k1"]);
    identity(&mut c);
    let out = run(&mut c);
    assert!(out.status.success(), "{out:?}");

    // open with no passphrase: unlocked through the third endpoint.
    let socket = dir.path().join("vol.sock");
    let mut c = nbdcrypt();
    c.arg("open").arg(&image).arg("--socket").arg(&socket);
    identity(&mut c);
    let mut server = Server::launch(c, socket.clone(), "vol".into());
    let info = common::nbd_tool("nbdinfo")
        .args(["--size", &server.uri()])
        .output()
        .unwrap();
    assert!(info.status.success(), "{info:?}");
    let (st, _) = server.stop();
    assert!(st.success());
    let unwraps = k
        .audit_rows()
        .iter()
        .filter(|r| r["action"] == "unwrap" && r["outcome"] == "ok")
        .count();
    assert_eq!(unwraps, 1);

    // With the service down and no terminal: exit 2, each endpoint's failure named.
    k.stop_with(libc::SIGTERM);
    let mut c = nbdcrypt();
    c.arg("open").arg(&image).arg("--socket").arg(&socket);
    identity(&mut c);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = common::stderr(&out);
    for u in [&silent_url, &refusing, &k.url] {
        assert!(err.contains(u.as_str()), "{u} not named in: {err}");
    }
    assert!(err.contains("no answer within 2 s"), "{err}");
    // The passphrase still opens the volume without the service.
    let mut c = nbdcrypt();
    c.arg("open")
        .arg(&image)
        .arg("--key-file")
        .arg(&key)
        .arg("--socket")
        .arg(&socket);
    let mut server = Server::launch(c, socket.clone(), "vol".into());
    assert!(server.stop().0.success());
    drop(silent);
}

#[test]
fn escrow_package_opens_with_the_stock_age_and_holds_the_volume_key() {
    use common::{cryptsetup_volume_key, format_cheap, key_file};
    let dir = tempdir();
    let (k, officer_key, officer) = Keyd::with_officer(dir.path(), &[]);
    // A recipient that is not an age key is refused.
    let out =
        run(keyd()
            .arg("--data-dir")
            .arg(&k.data)
            .args(["officer", "add", "bad", "age1notakey"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let out = escrow(&k, &image, &["--key-file".as_ref(), key.as_ref()]);
    assert!(out.status.success(), "{out:?}");
    let uuid = luks_uuid(&image);
    let package = k.fetch_package(&officer, &uuid);
    let plain = age_decrypt(&officer_key, &package);
    assert_eq!(plain["format"], "nbdcrypt-escrow/1");
    assert_eq!(plain["volume_uuid"], uuid.as_str());
    assert_eq!(plain["volume_key"], cryptsetup_volume_key(&image, &key));
    // No recovery keyslot: no recovery entry.
    assert!(plain.get("recovery").is_none(), "{plain}");
    // The package is not the key in clear.
    assert!(!package.contains(plain["volume_key"].as_str().unwrap()));
}

/// `nbdcrypt escrow IMAGE UNLOCK... --key-service URL` as host A.
fn escrow(k: &Keyd, image: &std::path::Path, unlock: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut c = common::nbdcrypt();
    c.arg("escrow")
        .arg(image)
        .args(unlock)
        .args(["--key-service", &k.url]);
    run(k.host_flags(&mut c, "hostA"))
}

fn luks_uuid(image: &std::path::Path) -> String {
    common::ok(common::cryptsetup().arg("luksUUID").arg(image))
        .trim()
        .to_string()
}

/// `nbdcrypt recover IMAGE` with the officer's token (file) and identity, cheap PBKDF2 for the
/// new keyslot whose passphrase is `new`.
fn recover(
    k: &Keyd,
    image: &std::path::Path,
    token: &str,
    identity: &std::path::Path,
    new: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let token_file = k.dir.join("officer.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut c = common::nbdcrypt();
    c.arg("recover")
        .arg(image)
        .args(["--key-service", &k.url])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--identity")
        .arg(identity)
        .arg("--key-service-ca")
        .arg(k.data.join("ca.pem"))
        .arg("--new-keyfile")
        .arg(new)
        .args(["--pbkdf", "pbkdf2"])
        .args(common::cheap_kdf_args("pbkdf2"))
        .args(extra);
    run(&mut c)
}

#[test]
fn recover_with_the_officer_identity_after_the_passphrase_slots_are_gone() {
    use common::{
        cryptsetup, cryptsetup_test_passphrase, format_cheap, key_file, nbdcrypt, ok, stderr,
        test_passphrase,
    };
    let dir = tempdir();
    let (k, officer_key, officer) = Keyd::with_officer(dir.path(), &["k1"]);
    let auditor = k.token("audrey", "auditor");
    let (stranger_key, _) = common::keyd::age_keygen(dir.path(), "stranger");
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let uuid = luks_uuid(&image);
    // Keyslot 1: the key service's; then escrow.
    let mut c = nbdcrypt();
    c.arg("add-key")
        .arg(&image)
        .arg("--key-file")
        .arg(&key)
        .args(["--key-service", &k.url, "--kek", "k1"]);
    ok(k.host_flags(&mut c, "hostA"));
    let out = escrow(&k, &image, &["--key-file".as_ref(), key.as_ref()]);
    assert!(out.status.success(), "{out:?}");
    // Every passphrase keyslot is destroyed; only the service's remains.
    ok(nbdcrypt()
        .arg("kill-slot")
        .arg(&image)
        .args(["0", "--batch-mode"]));
    assert!(!cryptsetup_test_passphrase(&image, &key).status.success());
    let new = dir.path().join("new-pass");
    std::fs::write(&new, b"recovered passphrase").unwrap();
    let dump = || ok(cryptsetup().arg("luksDump").arg(&image));
    let before = dump();

    // Refusals, the header unchanged after each.
    // A host certificate asking for the package (the API, with curl).
    let r = k.get_as_host("hostA", &format!("/v1/volumes/{uuid}/escrow"));
    refused(&k, &r, 403, "role", "host:hostA");
    // A token of another role.
    let out = recover(&k, &image, &auditor, &officer_key, &new, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("cannot fetch the escrow package"), "{err}");
    assert!(
        err.contains("403 role: escrow-fetch needs role officer"),
        "{err}"
    );
    // A wrong token.
    let out = recover(&k, &image, "nbk_not-a-token", &officer_key, &new, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("401 bad-token"), "{}", stderr(&out));
    // An age identity that is not an officer's: exit 2.
    let out = recover(&k, &image, &officer, &stranger_key, &new, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("is not one of the recovery officers the escrow package is sealed to"),
        "{err}"
    );
    // A volume without a package.
    let other = dir.path().join("other.img");
    format_cheap(&other, &key, "20M", 512, "pbkdf2");
    let other_uuid = luks_uuid(&other);
    let out = recover(&k, &other, &officer, &officer_key, &new, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("404 no-escrow"), "{err}");
    assert!(err.contains(&other_uuid), "{err}");
    // The package of another volume stored under this volume's UUID (by its owner host).
    let out = escrow(&k, &other, &["--key-file".as_ref(), key.as_ref()]);
    assert!(out.status.success(), "{out:?}");
    let good = k.fetch_package(&officer, &uuid);
    let foreign = k.fetch_package(&officer, &other_uuid);
    let path = format!("/v1/volumes/{uuid}/escrow");
    let r = k.as_host("hostA", "PUT", &path, &json!({ "package": foreign }));
    assert_eq!(r.status, 200, "{r:?}");
    let out = recover(&k, &image, &officer, &officer_key, &new, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the escrow package is for volume {other_uuid}, not"
        )),
        "{err}"
    );
    // Forged packages for this UUID: a volume key that is not this volume's, and an unknown
    // format version.
    let vk = age_decrypt(&officer_key, &good)["volume_key"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong_vk = format!(
        "{}{}",
        if vk.starts_with('0') { "1" } else { "0" },
        &vk[1..]
    );
    for (plain, msg) in [
        (
            json!({"format": "nbdcrypt-escrow/1", "volume_uuid": uuid, "volume_key": wrong_vk}),
            "the escrow package's volume key does not match the header digest".to_string(),
        ),
        (
            json!({"format": "nbdcrypt-escrow/2", "volume_uuid": uuid, "volume_key": vk}),
            "the escrow package has format \"nbdcrypt-escrow/2\"".to_string(),
        ),
    ] {
        let forged = common::keyd::age_encrypt(&officer_key, &plain.to_string());
        let r = k.as_host("hostA", "PUT", &path, &json!({ "package": forged }));
        assert_eq!(r.status, 200, "{r:?}");
        let out = recover(&k, &image, &officer, &officer_key, &new, &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(stderr(&out).contains(&msg), "{}", stderr(&out));
    }
    assert_eq!(dump(), before);
    let r = k.as_host("hostA", "PUT", &path, &json!({ "package": good }));
    assert_eq!(r.status, 200, "{r:?}");

    // The officer recovers: a new passphrase keyslot that nbdcrypt and cryptsetup accept.
    let out = recover(&k, &image, &officer, &officer_key, &new, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("key slot 0 opens it"),
        "{}",
        stderr(&out)
    );
    assert!(test_passphrase(&image, &new, &[]).status.success());
    assert!(cryptsetup_test_passphrase(&image, &new).status.success());
    let fetches: Vec<Value> = k
        .audit_rows()
        .into_iter()
        .filter(|r| r["action"] == "escrow-fetch" && r["target"] == uuid.as_str())
        .collect();
    assert!(fetches
        .iter()
        .any(|r| r["actor"] == "token:olga(officer)" && r["outcome"] == "ok"));
    assert!(fetches
        .iter()
        .any(|r| r["actor"] == "token:audrey(auditor)" && r["outcome"] == "refused 403: role"));
}

#[test]
fn recovery_key_add_escrow_seals_the_recovery_key_before_the_keyslot_is_written() {
    use common::{cryptsetup, cryptsetup_test_passphrase, cryptsetup_volume_key, nbdcrypt, ok};
    use common::{format_cheap, key_file, stderr};
    let dir = tempdir();
    let (mut k, officer_key, officer) = Keyd::with_officer(dir.path(), &[]);
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let uuid = luks_uuid(&image);
    let add = |k: &Keyd| {
        let mut c = nbdcrypt();
        c.args(["recovery-key", "add"])
            .arg(&image)
            .arg("--key-file")
            .arg(&key)
            .args(["--pbkdf", "pbkdf2"])
            .args(common::cheap_kdf_args("pbkdf2"))
            .args(["--escrow", &k.url]);
        run(k.host_flags(&mut c, "hostA"))
    };
    let out = add(&k);
    assert!(out.status.success(), "{out:?}");
    let password = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(password.len(), 55, "{password}");
    // The stock age opens the package: volume key, UUID and this recovery key.
    let plain = age_decrypt(&officer_key, &k.fetch_package(&officer, &uuid));
    assert_eq!(plain["format"], "nbdcrypt-escrow/1");
    assert_eq!(plain["volume_uuid"], uuid.as_str());
    assert_eq!(plain["volume_key"], cryptsetup_volume_key(&image, &key));
    assert_eq!(plain["recovery"]["keyslot"], 1);
    assert_eq!(plain["recovery"]["password"], password.as_str());
    let token: Value = serde_json::from_str(&ok(cryptsetup()
        .args(["token", "export", "--token-id", "0"])
        .arg(&image)))
    .unwrap();
    assert_eq!(token["type"], "nbdcrypt-recovery");
    assert_eq!(token["keyslots"], json!(["1"]));
    assert_eq!(plain["recovery"]["recovery_id"], token["recovery_id"]);
    // The escrowed recovery password opens the volume (cryptsetup, keyslot 1).
    let rk = dir.path().join("recovery.txt");
    std::fs::write(&rk, plain["recovery"]["password"].as_str().unwrap()).unwrap();
    let out = run(cryptsetup()
        .args(["open", "--test-passphrase", "--key-slot", "1", "--key-file"])
        .arg(&rk)
        .arg(&image));
    assert!(out.status.success(), "{out:?}");
    assert!(cryptsetup_test_passphrase(&image, &key).status.success());

    // `escrow` with the passphrase cannot include the recovery key, and says so.
    let out = escrow(&k, &image, &["--key-file".as_ref(), key.as_ref()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("the recovery key of keyslot 1 cannot be read back"),
        "{}",
        stderr(&out)
    );
    let plain = age_decrypt(&officer_key, &k.fetch_package(&officer, &uuid));
    assert!(plain.get("recovery").is_none(), "{plain}");
    // Unlocked with the recovery key, `escrow` puts it back into the package.
    let out = escrow(&k, &image, &["--recovery-key".as_ref(), rk.as_ref()]);
    assert!(out.status.success(), "{out:?}");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let plain = age_decrypt(&officer_key, &k.fetch_package(&officer, &uuid));
    assert_eq!(plain["recovery"]["password"], password.as_str());
    assert_eq!(plain["recovery"]["keyslot"], 1);

    // The header write fails after the upload (a full disk, by the debug-build fault hook):
    // no key printed, header unchanged, the error says the package is stored and what to do;
    // the package's recovery key opens nothing, its volume key still recovers the volume.
    let before = ok(cryptsetup().arg("luksDump").arg(&image));
    let mut c = nbdcrypt();
    c.env("NBDCRYPT_FAULT_IO", "write@1=ENOSPC")
        .args(["recovery-key", "add"])
        .arg(&image)
        .arg("--key-file")
        .arg(&key)
        .args(["--pbkdf", "pbkdf2"])
        .args(common::cheap_kdf_args("pbkdf2"))
        .args(["--escrow", &k.url]);
    let out = run(k.host_flags(&mut c, "hostA"));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("the escrow package was uploaded but the keyslot was not written"),
        "{err}"
    );
    assert_eq!(ok(cryptsetup().arg("luksDump").arg(&image)), before);
    let plain = age_decrypt(&officer_key, &k.fetch_package(&officer, &uuid));
    assert_eq!(plain["recovery"]["keyslot"], 2);
    assert_eq!(plain["volume_key"], cryptsetup_volume_key(&image, &key));
    let orphan = dir.path().join("orphan.txt");
    std::fs::write(&orphan, plain["recovery"]["password"].as_str().unwrap()).unwrap();
    assert!(!cryptsetup_test_passphrase(&image, &orphan).status.success());

    // With the service down, nothing changes: no keyslot, no recovery key printed.
    k.stop_with(libc::SIGTERM);
    let out = add(&k);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains(&k.url), "{err}");
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(ok(cryptsetup().arg("luksDump").arg(&image)), before);
}

#[test]
fn format_escrow_checks_the_service_first_and_escrows_the_new_volume() {
    use common::{cryptsetup_test_passphrase_header, cryptsetup_volume_key_with};
    use common::{free_port, key_file, nbdcrypt, stderr};
    let dir = tempdir();
    let (k, officer_key, officer) = Keyd::with_officer(dir.path(), &[]);
    let key = key_file(dir.path());
    let image = dir.path().join("data.img");
    let header = dir.path().join("data.hdr");
    let format = |url: &str| {
        let mut c = nbdcrypt();
        c.arg("format")
            .arg(&image)
            .arg("--header")
            .arg(&header)
            .args(["--size", "20M", "--batch-mode", "--pbkdf", "pbkdf2"])
            .args(common::cheap_kdf_args("pbkdf2"))
            .arg("--key-file")
            .arg(&key)
            .args(["--escrow", url]);
        run(k.host_flags(&mut c, "hostA"))
    };
    // A service that does not answer: refused before anything is written.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let out = format(&dead);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains(&dead), "{}", stderr(&out));
    assert!(!image.exists() && !header.exists());
    // Formatted and escrowed in one step.
    let out = format(&k.url);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("escrowed to 1 recovery officer"));
    let uuid = common::ok(common::cryptsetup().arg("luksUUID").arg(&header))
        .trim()
        .to_string();
    let plain = age_decrypt(&officer_key, &k.fetch_package(&officer, &uuid));
    assert_eq!(plain["volume_uuid"], uuid.as_str());
    assert_eq!(
        plain["volume_key"],
        cryptsetup_volume_key_with(&image, Some(&header), &key)
    );
    // `recover --header` adds a passphrase to the detached header.
    let new = dir.path().join("new-pass");
    std::fs::write(&new, b"second passphrase").unwrap();
    let h = header.to_str().unwrap();
    let out = recover(&k, &image, &officer, &officer_key, &new, &["--header", h]);
    assert!(out.status.success(), "{out:?}");
    assert!(cryptsetup_test_passphrase_header(&image, &header, &new)
        .status
        .success());

    // The escrow fails after formatting (an officer recipient that does not parse, written
    // straight into the store past `officer add`'s check): exit 1, the volume opens with its
    // passphrase, and the error gives the command that escrows it later.
    let sqlite3 = require("sqlite3", "sqlite3");
    let db = k.data.join("keyd.db");
    let sql = |q: &str| {
        let out = run(Command::new(&sqlite3).arg(&db).arg(q));
        assert!(out.status.success(), "{out:?}");
    };
    sql("INSERT INTO officers (name, recipient) VALUES ('mallory', 'age1notakey');");
    let second = dir.path().join("second.img");
    let mut c = nbdcrypt();
    c.arg("format")
        .arg(&second)
        .args(["--size", "20M", "--batch-mode", "--pbkdf", "pbkdf2"])
        .args(common::cheap_kdf_args("pbkdf2"))
        .arg("--key-file")
        .arg(&key)
        .args(["--escrow", &k.url]);
    let out = run(k.host_flags(&mut c, "hostA"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("officer recipient \"age1notakey\""), "{err}");
    let hint = format!(
        "has no escrow package: run `nbdcrypt escrow {} --key-service {}`",
        second.display(),
        k.url
    );
    assert!(err.contains(&hint), "{err}");
    assert!(common::test_passphrase(&second, &key, &[]).status.success());
    let second_uuid = luks_uuid(&second);
    let r = k.with_token(
        &officer,
        "GET",
        &format!("/v1/volumes/{second_uuid}/escrow"),
        &Value::Null,
    );
    assert_eq!(r.status, 404, "{r:?}");
    // With the store mended, the command of the hint escrows it.
    sql("DELETE FROM officers WHERE name = 'mallory';");
    let out = escrow(&k, &second, &["--key-file".as_ref(), key.as_ref()]);
    assert!(out.status.success(), "{out:?}");
    let plain = age_decrypt(&officer_key, &k.fetch_package(&officer, &second_uuid));
    assert_eq!(plain["volume_uuid"], second_uuid.as_str());
}

/// A header token listing 200 silent key-service URLs costs at most the first 8 and
/// 3 × `--key-service-timeout` in all, then the unlock fails (exit 2) naming the cap.
#[test]
fn a_token_with_hundreds_of_dead_urls_is_bounded() {
    use common::{format_cheap, key_file, nbdcrypt};
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    k.host("hostA");
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    crate::bad_input::rewrite_both_copies(&image, &mut |_, md| {
        md.tokens.insert(
            nbdcrypt::format::metadata::Id(0),
            json!({"type": "nbdcrypt-keyservice", "keyslots": ["0"], "urls": vec![&url; 200],
                   "kek": "k1", "kek_version": 1, "blob": "AAAA"}),
        );
    });
    let started = std::time::Instant::now();
    let mut c = nbdcrypt();
    c.arg("open")
        .arg(&image)
        .arg("--socket")
        .arg(dir.path().join("vol.sock"))
        .arg("--key-service-cert")
        .arg(dir.path().join("hostA").join("host.pem"))
        .arg("--key-service-key")
        .arg(dir.path().join("hostA").join("host.key"))
        .arg("--key-service-ca")
        .arg(k.data.join("ca.pem"))
        .args(["--key-service-timeout", "1"]);
    let out = run(&mut c);
    let took = started.elapsed();
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lists 200 URLs; only the first 8"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "took {took:?}: {err}"
    );
    drop(silent);
}
