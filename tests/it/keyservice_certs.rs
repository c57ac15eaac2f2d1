//! Certificate lifetimes of the key service against a real `nbdcrypt-keyd`
//! (`docs/keyservice-api.md` "Certificate lifetimes"): host, server and CA certificates end,
//! `host renew` gives a host a new certificate under which its volume still unwraps (the old
//! one is refused), and `server-cert renew` replaces the server's certificate.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::x509::X509;
use serde_json::{json, Value};

use crate::common::keyd::Keyd;
use crate::common::tempdir;

const VOL: &str = "7c1d2e3f-4a5b-4c6d-8e7f-a0b1c2d3e4f5";
const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";

/// Days from now to the certificate's notAfter (rounded down).
fn days_left(pem: &Path) -> i32 {
    let cert = X509::from_pem(&std::fs::read(pem).unwrap()).unwrap();
    let now = Asn1Time::days_from_now(0).unwrap();
    now.diff(cert.not_after()).unwrap().days
}

/// POST `body` to `path` with the certificate and key `cert`, `key`.
fn post_as(k: &Keyd, cert: &Path, key: &Path, path: &str, body: &Value) -> (u16, Value) {
    let b = body.to_string();
    let r = k.curl(
        path,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &b,
        ],
    );
    (r.status, r.body)
}

#[test]
fn certificates_end_and_a_renewed_host_still_unwraps_its_volume() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    // The CA lasts ten years, the server certificate one by default.
    let ca = days_left(&k.data.join("ca.pem"));
    assert!((3649..=3650).contains(&ca), "CA: {ca} days");
    let server = days_left(&k.data.join("server.pem"));
    assert!((364..=365).contains(&server), "server: {server} days");
    k.admin(&["kek", "create", "k1"]);
    let (cert, key) = k.host("hostA");
    let host = days_left(&cert);
    assert!((364..=365).contains(&host), "host: {host} days");
    k.serve();
    let r = k.as_host("hostA", "POST", "/v1/volumes", &json!({ "uuid": VOL }));
    assert_eq!(r.status, 200, "{r:?}");
    let w = k.as_host(
        "hostA",
        "POST",
        &format!("/v1/volumes/{VOL}/wrap"),
        &json!({"slot": 1, "kek": "k1", "secret": SECRET}),
    );
    assert_eq!(w.status, 200, "{w:?}");
    let unwrap_body = json!({"slot": 1, "kek": "k1", "version": 1, "blob": w.body["blob"]});
    let unwrap_path = format!("/v1/volumes/{VOL}/unwrap");

    // Renew while serving: a new key pair, the same host name, 30 days.
    // The directory is created as host add creates it.
    let renewed = dir.path().join("renewed");
    let out = k.admin(&[
        "host",
        "renew",
        "hostA",
        "--out-dir",
        renewed.to_str().unwrap(),
        "--cert-days",
        "30",
    ]);
    assert!(out.contains("valid 30 days"), "{out}");
    let (new_cert, new_key) = (renewed.join("host.pem"), renewed.join("host.key"));
    let d = days_left(&new_cert);
    assert!((29..=30).contains(&d), "renewed: {d} days");
    assert_ne!(
        std::fs::read(&key).unwrap(),
        std::fs::read(&new_key).unwrap()
    );
    // The volume's blob unwraps with the new certificate; the old one is refused.
    let (status, body) = post_as(&k, &new_cert, &new_key, &unwrap_path, &unwrap_body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["secret"], SECRET);
    let (status, body) = post_as(&k, &cert, &key, &unwrap_path, &unwrap_body);
    assert_eq!(status, 403, "the old certificate after renew: {body}");
    assert_eq!(body["type"], "urn:nbdcrypt:keyd:unknown-host");
    // Renewing into a directory that already has the files is refused before anything
    // changes: the new certificate keeps working.
    let out = crate::common::run(
        crate::common::keyd::keyd()
            .arg("--data-dir")
            .arg(&k.data)
            .args(["host", "renew", "hostA", "--out-dir"])
            .arg(&renewed),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (status, _) = post_as(&k, &new_cert, &new_key, &unwrap_path, &unwrap_body);
    assert_eq!(status, 200);
    let rows = k.audit_rows();
    assert!(rows
        .iter()
        .any(|r| r["action"] == "host-renew" && r["target"] == "hostA"));
}

#[test]
fn server_cert_renew_replaces_the_server_certificate() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    let before = std::fs::read(k.data.join("server.pem")).unwrap();
    // The names clients connect by are given, never silently replaced by defaults.
    let refused = crate::common::run(
        crate::common::keyd::keyd()
            .arg("--data-dir")
            .arg(&k.data)
            .args(["server-cert", "renew", "--cert-days", "10"]),
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert_eq!(before, std::fs::read(k.data.join("server.pem")).unwrap());
    let out = k.admin(&[
        "server-cert",
        "renew",
        "--cert-days",
        "10",
        "--server-name",
        "localhost",
        "--server-name",
        "127.0.0.1",
    ]);
    assert!(out.contains("restart"), "{out}");
    let after = std::fs::read(k.data.join("server.pem")).unwrap();
    assert_ne!(before, after);
    let d = days_left(&k.data.join("server.pem"));
    assert!((9..=10).contains(&d), "server: {d} days");
    // The new pair serves, and clients still trust it through ca.pem.
    k.serve();
    let r = k.curl("/v1/health", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(k
        .audit_rows()
        .iter()
        .any(|r| r["action"] == "server-cert-renew"));
}

#[test]
fn a_joined_host_gets_the_join_tokens_certificate_lifetime() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    let short = k
        .admin(&["host", "join-token", "hostJ", "--cert-days", "20"])
        .trim()
        .to_string();
    let default = k.admin(&["host", "join-token", "hostD"]).trim().to_string();
    k.serve();
    for (host, token, days) in [("hostJ", &short, 20), ("hostD", &default, 365)] {
        let out_dir = dir.path().join(host);
        let file = dir.path().join(format!("{host}.token"));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let out = crate::common::run(
            crate::common::keyd::keyd()
                .args(["join", &k.url, "--ca"])
                .arg(k.data.join("ca.pem"))
                .arg("--out")
                .arg(&out_dir)
                .arg("--token-file")
                .arg(&file),
        );
        assert!(out.status.success(), "{out:?}");
        let d = days_left(&out_dir.join("host.pem"));
        assert!((days - 1..=days).contains(&d), "{host}: {d} days");
    }
}
