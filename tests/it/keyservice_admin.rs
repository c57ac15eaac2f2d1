//! Administration of the key service's identities against a real `nbdcrypt-keyd`
//! (`docs/keyservice-api.md` "Administration"): `host add` writes the layout `nbdcrypt`
//! reads by default and records the host only once its files are written.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::common::keyd::{keyd, Keyd};
use crate::common::{run, stderr, tempdir};

/// `nbdcrypt-keyd --data-dir D ARGS...` on `k`'s store, whatever its outcome.
fn admin_run(k: &Keyd, args: &[&str]) -> Output {
    run(keyd().arg("--data-dir").arg(&k.data).args(args))
}

#[test]
fn host_add_writes_host_pem_key_and_ca_into_a_new_directory() {
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    let out = dir.path().join("etc/nbdcrypt/keyservice");
    let said = k.admin(&["host", "add", "hostA", "--out-dir", out.to_str().unwrap()]);
    assert!(said.contains("host.pem"), "{said}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700, "the created directory");
    assert_eq!(mode(&out.join("host.key")), 0o600);
    assert!(std::fs::read_to_string(out.join("host.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        std::fs::read(k.data.join("ca.pem")).unwrap()
    );
    // A second host into the same directory is refused before anything changes.
    let r = admin_run(
        &k,
        &["host", "add", "hostB", "--out-dir", out.to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(stderr(&r).contains("host.key"), "{}", stderr(&r));
    assert!(!k.audit_rows().iter().any(|r| r["target"] == "hostB"));
}

#[test]
fn a_failed_host_add_does_not_burn_the_name() {
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    // The directory cannot be created: its parent is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad = file.join("out");
    let r = admin_run(
        &k,
        &["host", "add", "hostA", "--out-dir", bad.to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let rows = k.audit_rows();
    assert!(
        !rows
            .iter()
            .any(|r| r["action"] == "host-add" && r["target"] == "hostA"),
        "a host that was not created is not audited: {rows:?}"
    );
    // The name is still free: the same command into a good directory succeeds.
    let good = dir.path().join("hostA");
    k.admin(&["host", "add", "hostA", "--out-dir", good.to_str().unwrap()]);
    assert!(good.join("host.pem").exists());
    assert!(k
        .audit_rows()
        .iter()
        .any(|r| r["action"] == "host-add" && r["target"] == "hostA" && r["outcome"] == "ok"));
}

/// The JSON lines `ARGS` prints.
fn lines(k: &Keyd, args: &[&str]) -> Vec<serde_json::Value> {
    k.admin(args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn host_token_and_officer_lists_and_removals() {
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    k.host("hostA");
    k.host("hostB");
    let vol = "7c1d2e3f-4a5b-4c6d-8e7f-a0b1c2d3e4f5";
    k.admin(&["volume", "assign", vol, "--host", "hostA"]);
    let hosts = lines(&k, &["host", "list"]);
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(hosts[0]["name"], "hostA");
    assert_eq!(hosts[0]["volumes"], 1);
    assert_eq!(hosts[1]["revoked"], false);

    // A host that owns a volume is not removed; once its volume is assigned away, it is.
    let r = admin_run(&k, &["host", "remove", "hostA"]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(stderr(&r).contains("volume assign"), "{}", stderr(&r));
    k.admin(&["volume", "assign", vol, "--host", "hostB"]);
    k.admin(&["host", "remove", "hostA"]);
    let hosts = lines(&k, &["host", "list"]);
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["name"], "hostB");
    let r = admin_run(&k, &["host", "remove", "nobody"]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");

    // Tokens: listed without the token.
    let t = k.token("ann", "auditor");
    let listing = k.admin(&["token", "list"]);
    assert!(
        !listing.contains(&t) && !listing.contains("nbk_"),
        "{listing}"
    );
    let tokens = lines(&k, &["token", "list"]);
    let names: Vec<_> = tokens.iter().map(|t| t["name"].clone()).collect();
    assert_eq!(names, ["admin", "ann"], "{tokens:?}");
    assert_eq!(tokens[1]["role"], "auditor");

    // Officers.
    let recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    k.admin(&["officer", "add", "olga", recipient]);
    let officers = lines(&k, &["officer", "list"]);
    assert_eq!(officers.len(), 1);
    assert_eq!(officers[0]["recipient"], recipient);
    k.admin(&["officer", "remove", "olga"]);
    assert!(lines(&k, &["officer", "list"]).is_empty());

    let rows = k.audit_rows();
    for (action, target) in [("host-remove", "hostA"), ("officer-remove", "olga")] {
        assert!(
            rows.iter()
                .any(|r| r["action"] == action && r["target"] == target && r["outcome"] == "ok"),
            "{action}: {rows:?}"
        );
    }
}

#[test]
fn init_prints_the_bare_admin_token_on_stdout() {
    // `Keyd::init` asserts stdout is the token and a newline, and the sentence on stderr.
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    assert_eq!(
        k.admin_token.len(),
        "nbk_".len() + 43,
        "{:?}",
        k.admin_token
    );
}
