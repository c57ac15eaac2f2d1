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
