//! What `nbdcrypt` says when a key-service command lacks its files: a host whose identity
//! files are missing is told how to get them, and `recover` (an officer's command) asks for
//! the service's CA instead of assuming the hosts' default path.

use crate::common::{format_cheap, key_file, nbdcrypt, run, stderr, tempdir};

#[test]
fn a_missing_host_identity_says_how_to_get_one() {
    let dir = tempdir();
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let missing = dir.path().join("no-such-dir");
    let out = run(nbdcrypt()
        .arg("escrow")
        .arg(&image)
        .arg("--key-file")
        .arg(&key)
        .args(["--key-service", "https://127.0.0.1:1"])
        .arg("--key-service-cert")
        .arg(missing.join("host.pem"))
        .arg("--key-service-key")
        .arg(missing.join("host.key"))
        .arg("--key-service-ca")
        .arg(missing.join("ca.pem")));
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("--key-service-cert"), "{err}");
    assert!(err.contains("nbdcrypt-keyd join"), "{err}");
}

#[test]
fn recover_requires_the_service_ca() {
    let dir = tempdir();
    let image = dir.path().join("vol.img");
    let key = key_file(dir.path());
    format_cheap(&image, &key, "20M", 512, "pbkdf2");
    let token = dir.path().join("olga.token");
    std::fs::write(&token, "nbk_x\n").unwrap();
    let out = run(nbdcrypt()
        .arg("recover")
        .arg(&image)
        .args(["--key-service", "https://127.0.0.1:1"])
        .arg("--token-file")
        .arg(&token)
        .arg("--identity")
        .arg(dir.path().join("olga.agekey")));
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("required") && err.contains("--key-service-ca"),
        "{err}"
    );
    assert!(!err.contains("/etc/nbdcrypt"), "{err}");
}
