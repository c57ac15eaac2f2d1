//! The key service's audit log against a real `nbdcrypt-keyd` (docs/keyservice-api.md "Audit
//! log"): a 60 kB path from an unauthenticated caller is capped in its row, a flood of
//! anonymous refusals from one address becomes a bounded number of rows with the count,
//! shutdown seals the log with a checkpoint; from the command line, a checkpoint kept off the
//! host catches a truncated tail, `INSERT OR REPLACE` is refused, and pruning keeps a log that
//! verifies and still shows a later edit.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::common::keyd::{keyd, Keyd};
use super::common::{require, run, tempdir};

/// `audit verify ARGS` on `k`'s store: (exit code, stdout + stderr).
fn verify(k: &Keyd, args: &[&str]) -> (Option<i32>, String) {
    let out = run(keyd()
        .arg("--data-dir")
        .arg(&k.data)
        .args(["audit", "verify"])
        .args(args));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `sqlite3 DB SQL`, required to succeed (an intruder editing the database).
fn sqlite(db: &Path, sql: &str) -> String {
    let sqlite3 = require("sqlite3", "sqlite3");
    let out = run(Command::new(sqlite3).arg(db).arg(sql));
    assert!(out.status.success(), "{sql}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_60_kb_path_and_a_flood_of_refusals_are_bounded() {
    let curl = require("curl", "curl");
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.serve();
    let long = "a".repeat(60_000);
    let r = k.curl(&format!("/v1/volumes/{long}/escrow"), &[]);
    assert_eq!(r.status, 400, "{r:?}");
    let seq = r.body["audit_seq"].as_i64().expect("written at once");
    let rows = k.audit_rows();
    let row = rows.iter().find(|r| r["seq"] == seq).unwrap();
    for f in ["actor", "action", "target", "outcome", "detail"] {
        let len = row[f].as_str().unwrap().len();
        assert!(len <= 256, "{f}: {len} bytes");
    }
    assert!(
        row["detail"].as_str().unwrap().contains("bytes, sha256 "),
        "{row}"
    );

    // 1000 requests without credentials over one connection from 127.0.0.1.
    let before = k.audit_rows().len();
    let url = format!("{}/v1/officers", k.url);
    let out = run(Command::new(&curl)
        .args(["-sS", "--max-time", "120", "--cacert"])
        .arg(k.data.join("ca.pem"))
        .args(["-w", "%{http_code}\n"])
        .args((0..1000).flat_map(|_| ["-o", "/dev/null", url.as_str()])));
    let codes = String::from_utf8_lossy(&out.stdout);
    let refused = codes.lines().filter(|c| *c == "401").count();
    assert_eq!(refused, 1000, "{:?}", String::from_utf8_lossy(&out.stderr));
    let during = k.audit_rows().len() - before;
    assert!(during <= 2, "{during} rows while serving");
    // A clean stop writes the count and seals the log.
    assert!(k.stop_with(libc::SIGTERM).success());
    let rows = k.audit_rows();
    let added = &rows[before..];
    assert!(added.len() <= 4, "{added:#?}");
    let agg = added
        .iter()
        .find(|r| {
            r["detail"]
                .as_str()
                .unwrap()
                .starts_with("×999 more from ip:127.0.0.1")
        })
        .unwrap_or_else(|| panic!("no ×999 row: {added:#?}"));
    assert_eq!(agg["outcome"], "refused 401: no-credentials");
    let last = rows.last().unwrap();
    assert_eq!(
        (&last["actor"], &last["action"]),
        (&Value::from("server"), &Value::from("checkpoint"))
    );
    let (code, text) = verify(&k, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("; 0 rows unsealed"), "{text}");
}

#[test]
fn a_checkpoint_kept_elsewhere_catches_a_truncated_tail() {
    let dir = tempdir();
    let k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.token("t1", "auditor");
    let kept = dir.path().join("checkpoint.json");
    std::fs::write(&kept, k.admin(&["audit", "checkpoint", "--new"])).unwrap();
    let cp: Value = serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    let sealed = cp["seq"].as_i64().unwrap();
    k.token("t2", "auditor");
    let (code, text) = verify(&k, &["--checkpoint", kept.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("holds the checkpoint of row {sealed}")),
        "{text}"
    );
    // The intruder cuts the log back to the checkpoint before the kept one: the log alone
    // still verifies; against the kept checkpoint it does not.
    let db = k.data.join("keyd.db");
    sqlite(
        &db,
        &format!("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq >= {sealed};"),
    );
    let (code, text) = verify(&k, &[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = verify(&k, &["--checkpoint", kept.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("truncated or rolled back"), "{text}");
    // REPLACE cannot overwrite a row (SQLite's REPLACE fires no DELETE trigger).
    let sqlite3 = require("sqlite3", "sqlite3");
    let out = run(Command::new(sqlite3).arg(&db).arg(
        "INSERT OR REPLACE INTO audit SELECT seq, time_ms, actor, action, target, outcome, \
         'forged', prev, hash FROM audit WHERE seq = 2;",
    ));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("append-only"),
        "{out:?}"
    );
}

#[test]
fn prune_checkpoint_and_verify_from_the_command_line() {
    let dir = tempdir();
    let k = Keyd::init(dir.path()); // rows 1 (init), 2 (checkpoint)
    k.admin(&["kek", "create", "k1"]); // 3, 4 (checkpoint)
    k.token("t1", "auditor"); // 5
    k.token("t2", "auditor"); // 6
    let out = k.admin(&["audit", "prune", "--keep-rows", "3"]);
    assert!(
        out.contains("pruned 3 rows; the log starts at checkpoint row 4"),
        "{out}"
    );
    let rows = k.audit_rows();
    let seqs: Vec<i64> = rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6, 7, 8], "{rows:#?}");
    assert_eq!(rows[3]["action"], "audit-prune");
    let (code, text) = verify(&k, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(rows 4 to 8)"), "{text}");
    // Nothing older than a day: nothing pruned.
    let out = k.admin(&["audit", "prune", "--before-days", "1"]);
    assert!(out.contains("nothing to prune"), "{out}");
    // A later edit is still found.
    sqlite(
        &k.data.join("keyd.db"),
        "DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'x' WHERE seq = 5;",
    );
    let (code, text) = verify(&k, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("audit chain broken at row 5"), "{text}");
}
