//! Unit tests of the audit log's defences: signed checkpoints against rewriting, deleting
//! and truncating (an intruder with a raw SQLite connection who drops the triggers and
//! recomputes every later hash), the INSERT guard against REPLACE, the field cap, pruning,
//! and the migration of a store made before checkpoints.

use rusqlite::{params, Connection};

use super::audit::row_hash;
use super::*;
use crate::refusal::Refusal;

/// A store with rows 1 (init), 2 (kek-create), 3 (host-add), 4 (kek-rotate).
fn store_with_rows() -> (Store, RootKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    Store::init(&path, &RootSource::KeyFile, &["localhost".to_string()]).unwrap();
    let mut store = Store::open(&path).unwrap();
    let root = store.unlock(None).unwrap();
    store.kek_create(&root, "k").unwrap();
    store.host_add(&root, "hostA").unwrap();
    store.kek_rotate(&root, "k").unwrap();
    (store, root, dir)
}

/// An intruder's connection with the triggers dropped.
fn intruder(store: &Store) -> Connection {
    let db = Connection::open(store.dir().join(DB_FILE)).unwrap();
    db.execute_batch(
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;
         DROP TRIGGER audit_append_only;",
    )
    .unwrap();
    db
}

/// Recomputes `prev` and `hash` of every row from `from` on, as an intruder covering an edit.
fn rechain(db: &Connection, from: i64) {
    let mut prev: Vec<u8> = db
        .query_row(
            "SELECT hash FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            [from],
            |r| r.get(0),
        )
        .unwrap_or(vec![0u8; 32]);
    let rows: Vec<(i64, i64, [String; 5])> = db
        .prepare(
            "SELECT seq, time_ms, actor, action, target, outcome, detail FROM audit
             WHERE seq >= ?1 ORDER BY seq",
        )
        .unwrap()
        .query_map([from], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (seq, t, f) in rows {
        let h = row_hash(&prev, seq, t, f.each_ref().map(String::as_str));
        db.execute(
            "UPDATE audit SET prev = ?1, hash = ?2 WHERE seq = ?3",
            params![prev, h, seq],
        )
        .unwrap();
        prev = h;
    }
}

fn refusal_entry(detail: &str) -> AuditEntry {
    AuditEntry {
        actor: "anonymous".into(),
        action: "unwrap".into(),
        target: String::new(),
        outcome: Refusal::NoCredentials.audit_outcome().unwrap(),
        detail: detail.into(),
    }
}

#[test]
fn a_checkpoint_seals_the_rows_before_it() {
    let (mut store, root, _dir) = store_with_rows();
    let r = store.audit_verify().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.checkpoints, r.sealed_through, r.unsealed), (0, None, 4));
    let cp = store.audit_checkpoint(&root, "cli").unwrap();
    assert_eq!((cp.seq, cp.row, cp.first), (4, 5, 1));
    assert_eq!(store.audit_latest_checkpoint().unwrap(), Some(cp.clone()));
    store.audit(refusal_entry("x")).unwrap();
    let r = store.audit_verify().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.rows, 6);
    assert_eq!(
        (r.checkpoints, r.sealed_through, r.unsealed),
        (1, Some(4), 1)
    );
    // The checkpoint kept elsewhere is still in the log.
    let v = CheckpointVerifier::of_store(&store).unwrap();
    assert!(store.audit_verify_with(&v, Some(&cp)).unwrap().ok);
    // A checkpoint file with its head or count changed is refused.
    let mut forged = cp.clone();
    forged.seq = 3;
    assert!(matches!(
        store.audit_verify_with(&v, Some(&forged)),
        Err(StoreError::Checkpoint(_))
    ));
}

#[test]
fn editing_a_row_and_recomputing_every_later_hash_is_detected() {
    let (mut store, root, _dir) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap();
    store.audit(refusal_entry("x")).unwrap();
    let db = intruder(&store);
    db.execute("UPDATE audit SET detail = 'version 9' WHERE seq = 4", [])
        .unwrap();
    rechain(&db, 4);
    let r = store.audit_verify().unwrap();
    assert!(!r.ok);
    assert_eq!(r.bad_seq, Some(5), "{r:?}");
    assert!(r.problem.unwrap().contains("signature does not verify"));
}

#[test]
fn deleting_a_row_and_renumbering_is_detected() {
    let (mut store, root, _dir) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap();
    store.audit(refusal_entry("x")).unwrap();
    let db = intruder(&store);
    db.execute_batch(
        "DELETE FROM audit WHERE seq = 3;
         UPDATE audit SET seq = seq - 1 WHERE seq > 3;",
    )
    .unwrap();
    rechain(&db, 3);
    let r = store.audit_verify().unwrap();
    assert!(!r.ok);
    assert_eq!(r.bad_seq, Some(4), "{r:?}");
    // Deleting the first rows (no checkpoint anchors the log there) is detected too.
    let (mut store, root, _dir2) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap();
    let db = intruder(&store);
    db.execute("DELETE FROM audit WHERE seq < 3", []).unwrap();
    let r = store.audit_verify().unwrap();
    assert_eq!(r.bad_seq, Some(3), "{r:?}");
}

#[test]
fn truncating_past_a_checkpoint_kept_elsewhere_is_detected() {
    let (mut store, root, _dir) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap();
    store.audit(refusal_entry("x")).unwrap();
    let kept = store.audit_checkpoint(&root, "server").unwrap();
    assert_eq!(kept.row, 7);
    store.audit(refusal_entry("y")).unwrap();
    let v = CheckpointVerifier::of_store(&store).unwrap();
    assert!(store.audit_verify_with(&v, Some(&kept)).unwrap().ok);
    // The tail from row 6 on is cut: the log still verifies on its own (row 5 is a
    // checkpoint), but not against the checkpoint kept off the host.
    let db = intruder(&store);
    db.execute("DELETE FROM audit WHERE seq >= 6", []).unwrap();
    assert!(store.audit_verify().unwrap().ok);
    let r = store.audit_verify_with(&v, Some(&kept)).unwrap();
    assert!(!r.ok);
    assert_eq!(r.bad_seq, Some(6), "{r:?}");
    assert!(r.problem.unwrap().contains("truncated or rolled back"));
    // Rolled back and regrown to the same length: row 6 differs from the kept head.
    store.audit(refusal_entry("z")).unwrap();
    store.audit(refusal_entry("z")).unwrap();
    let r = store.audit_verify_with(&v, Some(&kept)).unwrap();
    assert_eq!(r.bad_seq, Some(6), "{r:?}");
    assert!(r.problem.unwrap().contains("rewritten"));
}

#[test]
fn insert_or_replace_cannot_overwrite_a_row() {
    let (store, _root, _dir) = store_with_rows();
    let db = Connection::open(store.dir().join(DB_FILE)).unwrap();
    let (t, prev, hash): (i64, Vec<u8>, Vec<u8>) = db
        .query_row(
            "SELECT time_ms, prev, hash FROM audit WHERE seq = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    for verb in ["INSERT OR REPLACE", "REPLACE"] {
        let e = db
            .execute(
                &format!(
                    "{verb} INTO audit (seq, time_ms, actor, action, target, outcome, detail,
                     prev, hash) VALUES (2, ?1, 'cli', 'kek-create', 'k', 'ok', 'forged', ?2, ?3)"
                ),
                params![t, prev, hash],
            )
            .unwrap_err();
        assert!(e.to_string().contains("append-only"), "{verb}: {e}");
    }
    let detail: String = db
        .query_row("SELECT detail FROM audit WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    assert_ne!(detail, "forged");
    assert!(store.audit_verify().unwrap().ok);
}

#[test]
fn long_fields_are_capped_in_the_row_and_the_chain_holds() {
    let (mut store, _root, _dir) = store_with_rows();
    let long = "/".repeat(60_000);
    let seq = store
        .audit(AuditEntry {
            target: long.clone(),
            ..refusal_entry(&format!("{long:?} is not a volume UUID"))
        })
        .unwrap();
    let row = store.audit_list(seq - 1, 1).unwrap().remove(0);
    assert!(row.target.len() <= FIELD_CAP, "{}", row.target.len());
    assert!(row.detail.len() <= FIELD_CAP, "{}", row.detail.len());
    assert!(
        row.target.contains("(60000 bytes, sha256 "),
        "{}",
        row.target
    );
    assert!(store.audit_verify().unwrap().ok);
}

#[test]
fn prune_keeps_a_verifiable_anchor_and_later_edits_still_show() {
    let (mut store, root, _dir) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap(); // row 5 seals 1..=4
    for i in 0..5 {
        store.audit(refusal_entry(&format!("r{i}"))).unwrap(); // rows 6..=10
    }
    store.audit_checkpoint(&root, "server").unwrap(); // row 11
    store.audit(refusal_entry("after")).unwrap(); // row 12
                                                  // Keep at least 2 rows: the newest checkpoint leaving that many is row 11 (keeping 4
                                                  // would prune only to row 5).
    let p = store.audit_prune(&root, PruneRule::KeepRows(2)).unwrap();
    assert_eq!((p.removed, p.first), (10, 11), "{p:?}");
    let rows = store.audit_list(0, 100).unwrap();
    assert_eq!(rows[0].seq, 11);
    assert_eq!(rows[2].action, "audit-prune");
    assert_eq!(store.audit_latest_checkpoint().unwrap(), p.checkpoint);
    let r = store.audit_verify().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.first, r.unsealed), (11, 0));
    // Nothing more to prune: the newest checkpoint is the anchor's successor.
    let none = store.audit_prune(&root, PruneRule::BeforeDays(1)).unwrap();
    assert_eq!(none.removed, 0);
    // An edit after the prune is still detected.
    let db = intruder(&store);
    db.execute("UPDATE audit SET detail = 'no' WHERE seq = 12", [])
        .unwrap();
    rechain(&db, 12);
    let r = store.audit_verify().unwrap();
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.bad_seq, Some(14), "{r:?}");
}

#[test]
fn pruning_further_without_the_root_key_is_detected() {
    let (mut store, root, _dir) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap(); // row 5
    store.audit(refusal_entry("x")).unwrap(); // row 6
    store.audit_checkpoint(&root, "cli").unwrap(); // row 7, first = 1
    store.audit(refusal_entry("y")).unwrap(); // row 8
                                              // The intruder removes rows 1..=6, so the log starts at checkpoint row 7.
    let db = intruder(&store);
    db.execute("DELETE FROM audit WHERE seq < 7", []).unwrap();
    let r = store.audit_verify().unwrap();
    assert!(!r.ok, "{r:?}");
    assert!(r.problem.unwrap().contains("rows were deleted"));
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let (mut store, root, _dir) = store_with_rows();
    store.audit_checkpoint(&root, "cli").unwrap();
    let other = crate::pki::new_ca().unwrap();
    let v = CheckpointVerifier::from_pem(other.cert_pem.as_bytes()).unwrap();
    let r = store.audit_verify_with(&v, None).unwrap();
    assert_eq!(r.bad_seq, Some(5), "{r:?}");
}

#[test]
fn a_store_made_before_checkpoints_opens_verifies_and_is_sealed() {
    let (store, root, dir) = store_with_rows();
    // The store as an earlier version left it: no INSERT guard.
    let db = Connection::open(store.dir().join(DB_FILE)).unwrap();
    db.execute_batch("DROP TRIGGER audit_append_only;").unwrap();
    drop(store);
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'audit_append_only'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "open adds the INSERT guard");
    let r = store.audit_verify().unwrap();
    assert!(r.ok && r.checkpoints == 0 && r.unsealed == 4, "{r:?}");
    store.audit_checkpoint(&root, "server").unwrap();
    let r = store.audit_verify().unwrap();
    assert!(
        r.ok && r.sealed_through == Some(4) && r.unsealed == 0,
        "{r:?}"
    );
}
