//! One-time join tokens of the key service (docs/keyservice-api.md "Joining"): `host
//! join-token NAME` on the service, `nbdcrypt-keyd join URL --token-file T --ca ca.pem --out DIR` on
//! the host (key made there, 0600), the certificate then works as host NAME; a second use, an
//! expired token and a wrong token are refused with their status and audit row.

use crate::common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::keyd::{keyd, Keyd};
use common::{require, run, stderr, tempdir};
use serde_json::{json, Value};

const VOL: &str = "0a1b2c3d-0000-4000-8000-00000000001f";

/// `join` with the token in a file (with its trailing newline), as the examples do.
fn join(k: &Keyd, token: &str, out: &Path) -> Output {
    let file = out.with_extension("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    run(join_cmd(k, out).arg("--token-file").arg(&file))
}

/// `nbdcrypt-keyd join URL --ca CA --out OUT`, without its token.
fn join_cmd(k: &Keyd, out: &Path) -> Command {
    let mut c = keyd();
    c.args(["join", &k.url, "--ca"])
        .arg(k.data.join("ca.pem"))
        .arg("--out")
        .arg(out);
    c
}

/// The last audit row: its outcome and actor.
fn last_row(k: &Keyd) -> Value {
    k.audit_rows().pop().unwrap()
}

#[test]
fn join_token_is_exchanged_once_for_a_working_certificate() {
    let sqlite3 = require("sqlite3", "sqlite3");
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    let token = k
        .admin(&["host", "join-token", "hostJ", "--ttl", "600"])
        .trim()
        .to_string();
    assert!(token.starts_with("nbj_"), "{token}");
    let expired = k.admin(&["host", "join-token", "hostE"]).trim().to_string();
    k.serve();
    // Only the token's digest is stored.
    for f in ["keyd.db", "keyd.db-wal"] {
        let bytes = std::fs::read(k.data.join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{f} holds the token"
        );
    }

    let out_dir = dir.path().join("hostJ");
    let out = join(&k, &token, &out_dir);
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(out_dir.join("host.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let row = last_row(&k);
    assert_eq!(row["action"], "join");
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["target"], "hostJ");
    // The certificate authenticates as hostJ.
    let cert = out_dir.join("host.pem");
    let key = out_dir.join("host.key");
    let r = k.curl(
        "/v1/volumes",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &json!({ "uuid": VOL }).to_string(),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["owner"], "hostJ");

    // A second use is refused, and audited.
    let again = join(&k, &token, &dir.path().join("again"));
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        stderr(&again).contains("403 join-token-used"),
        "{}",
        stderr(&again)
    );
    let row = last_row(&k);
    assert_eq!(row["outcome"], "refused 403: join-token-used", "{row}");
    assert_eq!(row["actor"], "join:hostJ");
    assert!(!dir.path().join("again").join("host.key").exists());
    // A wrong token.
    let wrong = join(&k, "nbj_not-a-token", &dir.path().join("wrong"));
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(
        stderr(&wrong).contains("401 bad-join-token"),
        "{}",
        stderr(&wrong)
    );
    let row = last_row(&k);
    assert_eq!(row["outcome"], "refused 401: bad-join-token", "{row}");
    assert_eq!(row["actor"], "anonymous");
    // An expired token (its expiry moved into the past in the store).
    let st = run(Command::new(&sqlite3)
        .arg(k.data.join("keyd.db"))
        .arg("UPDATE join_tokens SET expires_ms = 1 WHERE host = 'hostE';"));
    assert!(st.status.success(), "{st:?}");
    let old = join(&k, &expired, &dir.path().join("hostE"));
    assert_eq!(old.status.code(), Some(1), "{old:?}");
    assert!(
        stderr(&old).contains("403 join-token-expired"),
        "{}",
        stderr(&old)
    );
    let row = last_row(&k);
    assert_eq!(row["outcome"], "refused 403: join-token-expired", "{row}");
    assert_eq!(row["actor"], "join:hostE");
    // A join token for an existing host is refused at the source.
    let dup = run(keyd()
        .arg("--data-dir")
        .arg(&k.data)
        .args(["host", "join-token", "hostJ"]));
    assert_eq!(dup.status.code(), Some(1), "{dup:?}");
    assert!(k.admin(&["audit", "verify"]).contains("audit chain ok"));
}

#[test]
fn join_reads_the_token_from_stdin_a_file_or_the_command_line() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    let token = |k: &Keyd, host: &str| k.admin(&["host", "join-token", host]).trim().to_string();
    let (t_stdin, t_argv) = (token(&k, "hostS"), token(&k, "hostV"));
    k.serve();
    // `--token-file -`: the token (and its newline) on stdin, so never in the process's argv.
    let out_dir = dir.path().join("hostS");
    let mut child = join_cmd(&k, &out_dir)
        .args(["--token-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{t_stdin}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out_dir.join("host.pem").exists());
    assert_eq!(last_row(&k)["target"], "hostS");
    // An empty token file is refused before anything is sent or written.
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let bad_dir = dir.path().join("bad");
    let bad = run(join_cmd(&k, &bad_dir).arg("--token-file").arg(&empty));
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(stderr(&bad).contains("empty.token"), "{}", stderr(&bad));
    assert!(!bad_dir.exists());
    // Neither form: a usage error (exit 2); the discouraged argv form still works.
    let none = run(&mut join_cmd(&k, &bad_dir));
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    let argv_dir = dir.path().join("hostV");
    let argv = run(join_cmd(&k, &argv_dir).args(["--token", &t_argv]));
    assert!(argv.status.success(), "{argv:?}");
    let help = run(keyd().args(["join", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(help.contains("Discouraged"), "{help}");
    assert!(help.contains("--token-file -"), "{help}");
}
