//! Unit tests of volume assignment and host certificate renewal and lifetimes: the store
//! driven through its public API in a temporary directory.

use rusqlite::params;

use super::*;
use crate::pki::{self, Validity};

const UUID: &str = "0f2b6c4e-1a2b-4c3d-8e9f-00112233aabb";

fn new_store() -> (Store, RootKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    Store::init(&path, &RootSource::KeyFile, &["localhost".to_string()]).unwrap();
    let store = Store::open(&path).unwrap();
    let root = store.unlock(None).unwrap();
    (store, root, dir)
}

fn register(store: &mut Store, uuid: &str, host: &str) {
    let entry = AuditEntry {
        actor: format!("host:{host}"),
        action: "register".into(),
        target: uuid.into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    store
        .with_audit(entry, |tx, _| register_volume(tx, uuid, host))
        .unwrap();
}

#[test]
fn the_admin_assigns_a_squatted_volume_to_its_owner() {
    let (mut store, root, _dir) = new_store();
    store.host_add(&root, "hostA").unwrap();
    store.host_add(&root, "hostB").unwrap();
    register(&mut store, UUID, "hostB");
    // Registering again as A is refused inside the transaction (first come; two hosts
    // racing cannot both be told they own it), and leaves no "ok" audit row.
    let rows_before = store.audit_list(0, i64::MAX).unwrap().len();
    let entry = AuditEntry {
        actor: "host:hostA".into(),
        action: "register".into(),
        target: UUID.into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    let r = store.with_audit(entry, |tx, _| register_volume(tx, UUID, "hostA"));
    assert!(
        matches!(&r, Err(StoreError::Exists { name, .. }) if name == "hostB"),
        "{r:?}"
    );
    assert_eq!(store.audit_list(0, i64::MAX).unwrap().len(), rows_before);
    assert_eq!(store.volume_owner(UUID).unwrap().as_deref(), Some("hostB"));
    let prev = store.volume_assign(&UUID.to_uppercase(), "hostA").unwrap();
    assert_eq!(prev.as_deref(), Some("hostB"));
    assert_eq!(store.volume_owner(UUID).unwrap().as_deref(), Some("hostA"));
    let list = store.volume_list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].uuid, UUID);
    assert_eq!(list[0].owner, "hostA");
    assert_eq!(list[0].escrow_stored_by, None);
    let rows = store.audit_list(0, i64::MAX).unwrap();
    let last = rows.last().unwrap();
    assert_eq!(last.action, "volume-assign");
    assert_eq!(last.target, UUID);
    assert!(last.detail.contains("was hostB"), "{}", last.detail);
    // An unregistered volume is registered by the assignment.
    let other = "11111111-2222-4333-8444-555555555555";
    assert_eq!(store.volume_assign(other, "hostB").unwrap(), None);
    assert_eq!(store.volume_owner(other).unwrap().as_deref(), Some("hostB"));
}

#[test]
fn assignment_needs_a_uuid_and_a_known_host() {
    let (mut store, root, _dir) = new_store();
    store.host_add(&root, "hostA").unwrap();
    assert!(matches!(
        store.volume_assign("not-a-uuid", "hostA"),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.volume_assign(UUID, "nobody"),
        Err(StoreError::NotFound { what: "host", .. })
    ));
    assert_eq!(store.volume_owner(UUID).unwrap(), None);
}

#[test]
fn renewing_a_host_replaces_its_certificate_and_keeps_its_name() {
    let (mut store, root, _dir) = new_store();
    let old = pki::fingerprint(&store.host_add(&root, "hostA").unwrap().cert_der);
    register(&mut store, UUID, "hostA");
    let new = store
        .host_renew(&root, "hostA", &Validity::days(30))
        .unwrap();
    let new = pki::fingerprint(&new.cert_der);
    assert_ne!(old, new);
    assert_eq!(store.host_by_fingerprint(&old).unwrap(), None);
    assert_eq!(
        store.host_by_fingerprint(&new).unwrap(),
        Some(("hostA".to_string(), false))
    );
    assert_eq!(store.volume_owner(UUID).unwrap().as_deref(), Some("hostA"));
    assert!(matches!(
        store.host_renew(&root, "nobody", &Validity::days(1)),
        Err(StoreError::NotFound { .. })
    ));
    store.host_revoke("hostA").unwrap();
    assert!(matches!(
        store.host_renew(&root, "hostA", &Validity::days(1)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.host_by_fingerprint(&new).unwrap(),
        Some(("hostA".to_string(), true))
    );
    let renews: i64 = rusqlite::Connection::open(store.dir().join(DB_FILE))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM audit WHERE action = ?1 AND target = ?2",
            params!["host-renew", "hostA"],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(renews, 1);
}

#[test]
fn a_join_token_table_without_cert_days_gets_the_column() {
    let (mut store, _root, _dir) = new_store();
    store.join_token_add_days("hostJ", 60, 20).unwrap();
    let path = store.dir().to_path_buf();
    drop(store);
    // A store made before join tokens carried a certificate lifetime.
    let db = rusqlite::Connection::open(path.join(DB_FILE)).unwrap();
    db.execute_batch("ALTER TABLE join_tokens DROP COLUMN cert_days;")
        .unwrap();
    drop(db);
    let mut store = Store::open(&path).unwrap();
    store.join_token_add("hostK", 60).unwrap();
    let days: Vec<Option<i64>> = rusqlite::Connection::open(path.join(DB_FILE))
        .unwrap()
        .prepare("SELECT cert_days FROM join_tokens ORDER BY host")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(days, vec![None, Some(365)]);
    assert!(matches!(
        store.join_token_add_days("hostL", 60, 0),
        Err(StoreError::Invalid(_))
    ));
}
