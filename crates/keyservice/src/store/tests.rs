//! Unit tests of the store without a server: each test makes a store in a temporary directory
//! (`init` with a key-file root key) and drives it through its public API and, to play an
//! attacker who edits the database, a second raw SQLite connection.

use rusqlite::Connection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::*;
use crate::pki;
use crate::refusal::Refusal;

/// A new store in a temporary directory, its unlocked root key, and the directory's guard.
fn new_store() -> (Store, RootKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let out = Store::init(&path, &RootSource::KeyFile, &["localhost".to_string()]).unwrap();
    assert!(out.admin_token.starts_with(TOKEN_PREFIX));
    let store = Store::open(&path).unwrap();
    let root = store.unlock(None).unwrap();
    (store, root, dir)
}

/// A second connection to the store's database, as an intruder with the `sqlite3` CLI.
fn raw(store: &Store) -> Connection {
    Connection::open(store.dir().join(DB_FILE)).unwrap()
}

#[test]
fn init_and_open() {
    let (store, _root, dir) = new_store();
    let path = dir.path().join("data");
    assert!(matches!(
        Store::init(&path, &RootSource::KeyFile, &[]),
        Err(StoreError::AlreadyInitialised(_))
    ));
    assert!(matches!(
        Store::open(&dir.path().join("none")),
        Err(StoreError::NotInitialised(_))
    ));
    assert!(!store.root_is_passphrase().unwrap());
    for f in [CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE, ROOT_KEY_FILE] {
        assert!(path.join(f).exists(), "{f}");
    }
    // The first row records init.
    let rows = store.audit_list(0, 10).unwrap();
    assert_eq!((rows.len(), rows[0].action.as_str()), (1, "init"));
    // The printed admin token is a working admin token.
    let other = dir.path().join("other");
    let out = Store::init(&other, &RootSource::KeyFile, &["localhost".to_string()]).unwrap();
    let s = Store::open(&other).unwrap();
    assert_eq!(
        s.token_lookup(&out.admin_token).unwrap(),
        Some(("admin".to_string(), Role::Admin))
    );
}

#[test]
fn a_wrong_root_key_file_does_not_open_the_store() {
    let (store, _root, _dir) = new_store();
    std::fs::write(store.dir().join(ROOT_KEY_FILE), [7u8; 32]).unwrap();
    assert!(matches!(store.unlock(None), Err(StoreError::RootKey(_))));
    std::fs::write(store.dir().join(ROOT_KEY_FILE), [7u8; 31]).unwrap();
    assert!(matches!(store.unlock(None), Err(StoreError::RootKey(_))));
}

#[test]
fn kek_create_rotate_and_version_lookup() {
    let (mut store, root, _dir) = new_store();
    store.kek_create(&root, "k1").unwrap();
    assert!(matches!(
        store.kek_create(&root, "k1"),
        Err(StoreError::Exists { what: "KEK", .. })
    ));
    assert!(matches!(
        store.kek_create(&root, "bad name"),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.kek_rotate(&root, "k1").unwrap(), 2);
    assert_eq!(store.kek_rotate(&root, "k1").unwrap(), 3);
    assert!(matches!(
        store.kek_rotate(&root, "nope"),
        Err(StoreError::NotFound { what: "KEK", .. })
    ));
    let info = store.kek_show("k1").unwrap();
    assert_eq!((info.current, info.min_unwrap_version), (3, 1));
    let versions: Vec<u32> = info.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, [1, 2, 3]);

    // (name, version, has material)
    let cases = [
        ("k1", 1, true),
        ("k1", 2, true),
        ("k1", 3, true),
        ("k1", 0, false),
        ("k1", 4, false),
        ("nope", 1, false),
    ];
    let mut seen = Vec::new();
    for (name, v, some) in cases {
        let m = store.kek_material(&root, name, v).unwrap();
        assert_eq!(m.is_some(), some, "{name} v{v}");
        if let Some(m) = m {
            assert_eq!(m.len(), crate::wrap::KEY_LEN);
            assert!(
                !seen.iter().any(|s: &Vec<u8>| s[..] == m[..]),
                "versions share material"
            );
            seen.push(m.to_vec());
        }
    }
    // Material sealed for one version does not open as another (AAD binds name and version).
    raw(&store)
        .execute(
            "UPDATE kek_versions SET sealed = (SELECT sealed FROM kek_versions WHERE version = 1)
             WHERE version = 2",
            [],
        )
        .unwrap();
    assert!(matches!(
        store.kek_material(&root, "k1", 2),
        Err(StoreError::Wrap(_))
    ));

    // (min unwrap version, accepted)
    for (min, ok) in [(0, false), (4, false), (2, true), (3, true), (1, true)] {
        let r = store.kek_set_min_unwrap("k1", min);
        assert_eq!(r.is_ok(), ok, "min {min}: {r:?}");
        if ok {
            assert_eq!(store.kek_show("k1").unwrap().min_unwrap_version, min);
        }
    }
    assert!(matches!(
        store.kek_show("nope"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn kek_usage_counts_the_last_version_per_keyslot() {
    let (mut store, root, _dir) = new_store();
    store.kek_create(&root, "k").unwrap();
    store.kek_rotate(&root, "k").unwrap();
    let uuid = "0f2b6c4e-1a2b-4c3d-8e9f-00112233aabb";
    let entry = |d: &str| AuditEntry {
        actor: "host:a".into(),
        action: "wrap".into(),
        target: uuid.into(),
        outcome: "ok".into(),
        detail: d.into(),
    };
    // (slot, version) reported in order; then keyslots per version 1 and 2.
    let steps = [
        ((0, 1), [1, 0]),
        ((1, 1), [2, 0]),
        ((0, 2), [1, 1]),
        ((1, 2), [0, 2]),
    ];
    for ((slot, version), want) in steps {
        store
            .with_audit(entry("w"), |tx, _| {
                record_usage(tx, uuid, slot, "k", version)
            })
            .unwrap();
        let got: Vec<i64> = store
            .kek_show("k")
            .unwrap()
            .versions
            .iter()
            .map(|v| v.keyslots)
            .collect();
        assert_eq!(got, want, "after slot {slot} v{version}");
    }
}

/// The store with a few rows: init, token-add, kek-create, host-add (4 rows).
fn store_with_rows() -> (Store, RootKey, tempfile::TempDir) {
    let (mut store, root, dir) = new_store();
    store.token_add("audrey", Role::Auditor).unwrap();
    store.kek_create(&root, "k").unwrap();
    store.host_add(&root, "hostA").unwrap();
    (store, root, dir)
}

#[test]
fn audit_chain_verifies_and_refuses_updates() {
    let (mut store, _root, _dir) = store_with_rows();
    let seq = store
        .audit(AuditEntry {
            actor: "anonymous".into(),
            action: "wrap".into(),
            target: String::new(),
            outcome: Refusal::NoCredentials.audit_outcome().unwrap(),
            detail: "no client certificate and no bearer token".into(),
        })
        .unwrap();
    assert_eq!(seq, 5);
    let rows = store.audit_list(0, 100).unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(rows[0].prev, "0".repeat(64));
    for w in rows.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
    }
    assert_eq!(rows[4].outcome, "refused 401: no-credentials");
    assert_eq!(store.audit_list(3, 1).unwrap()[0].seq, 4);
    let report = store.audit_verify().unwrap();
    assert_eq!(
        report,
        VerifyReport {
            rows: 5,
            ok: true,
            bad_seq: None,
            problem: None,
            first: 1,
            checkpoints: 0,
            sealed_through: None,
            unsealed: 5,
        }
    );
    // The triggers refuse edits and deletions.
    let db = raw(&store);
    assert!(db
        .execute("UPDATE audit SET detail = 'x' WHERE seq = 2", [])
        .is_err());
    assert!(db.execute("DELETE FROM audit WHERE seq = 5", []).is_err());
}

#[test]
fn audit_verify_names_the_first_edited_row() {
    // (the edit, with the triggers dropped; the row reported; its problem)
    let cases = [
        (
            "UPDATE audit SET detail = 'edited' WHERE seq = 2",
            2,
            "its content does not match its hash",
        ),
        (
            "UPDATE audit SET actor = 'cli2' WHERE seq = 3",
            3,
            "its content does not match its hash",
        ),
        (
            "UPDATE audit SET outcome = 'ok ' WHERE seq = 4",
            4,
            "its content does not match its hash",
        ),
        (
            "UPDATE audit SET time_ms = time_ms + 1 WHERE seq = 1",
            1,
            "its content does not match its hash",
        ),
        (
            "UPDATE audit SET prev = zeroblob(32) WHERE seq = 3",
            3,
            "its link to the previous row is wrong",
        ),
        (
            "DELETE FROM audit WHERE seq = 2",
            2,
            "row 2 is missing (next row is 3)",
        ),
    ];
    for (edit, bad, problem) in cases {
        let (store, _root, _dir) = store_with_rows();
        let db = raw(&store);
        db.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        assert_eq!(db.execute(edit, []).unwrap(), 1, "{edit}");
        let r = store.audit_verify().unwrap();
        assert!(!r.ok, "{edit}");
        assert_eq!(r.bad_seq, Some(bad), "{edit}");
        assert_eq!(r.problem.as_deref(), Some(problem), "{edit}");
    }
}

#[test]
fn a_failed_change_leaves_no_audit_row() {
    let (mut store, root, _dir) = store_with_rows();
    let before = store.audit_list(0, 100).unwrap().len();
    assert!(store.kek_create(&root, "k").is_err());
    assert!(store.host_revoke("nobody").is_err());
    let r: Result<(), StoreError> = store.with_audit(
        AuditEntry {
            actor: "cli".into(),
            action: "x".into(),
            target: String::new(),
            outcome: "ok".into(),
            detail: String::new(),
        },
        |_, _| Err(StoreError::Invalid("no".into())),
    );
    assert!(r.is_err());
    assert_eq!(store.audit_list(0, 100).unwrap().len(), before);
    assert!(store.audit_verify().unwrap().ok);
}

#[test]
fn tokens_create_check_and_revoke() {
    let (mut store, _root, _dir) = new_store();
    let mut issued = Vec::new();
    for (name, role) in [
        ("ada", Role::Admin),
        ("olga", Role::Officer),
        ("audrey", Role::Auditor),
    ] {
        let t = store.token_add(name, role).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 43);
        issued.push((name, role, t));
    }
    for (name, role, t) in &issued {
        assert_eq!(
            store.token_lookup(t).unwrap(),
            Some((name.to_string(), *role))
        );
        // Surrounding whitespace is the caller's to trim: the digest is of the exact text.
        assert_eq!(
            store.token_lookup(&format!("{} ", t.as_str())).unwrap(),
            None
        );
    }
    assert!(matches!(
        store.token_add("olga", Role::Admin),
        Err(StoreError::Exists { what: "token", .. })
    ));
    assert!(matches!(
        store.token_add("", Role::Admin),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.token_lookup("nbk_unknown").unwrap(), None);
    store.token_revoke("olga").unwrap();
    assert_eq!(store.token_lookup(&issued[1].2).unwrap(), None);
    assert!(store.token_lookup(&issued[0].2).unwrap().is_some());
    assert!(matches!(
        store.token_revoke("nobody"),
        Err(StoreError::NotFound { .. })
    ));
    // Only the digest is stored.
    let stored: Vec<u8> = raw(&store)
        .query_row("SELECT digest FROM tokens WHERE name = 'ada'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&issued[0].2.as_str()[4..]));
}

#[test]
fn roles_parse_and_print() {
    for (text, role) in [
        ("admin", Some(Role::Admin)),
        ("officer", Some(Role::Officer)),
        ("auditor", Some(Role::Auditor)),
        ("Admin", None),
        ("", None),
    ] {
        assert_eq!(text.parse::<Role>().ok(), role, "{text:?}");
        if let Some(r) = role {
            assert_eq!(r.as_str(), text);
        }
    }
}

#[test]
fn hosts_add_revoke_and_lookup() {
    let (mut store, root, _dir) = new_store();
    let issued = store.host_add(&root, "hostA").unwrap();
    let fpr = pki::fingerprint(&issued.cert_der);
    assert_eq!(
        store.host_by_fingerprint(&fpr).unwrap(),
        Some(("hostA".to_string(), false))
    );
    assert!(matches!(
        store.host_add(&root, "hostA"),
        Err(StoreError::Exists { what: "host", .. })
    ));
    store.host_revoke("hostA").unwrap();
    assert_eq!(
        store.host_by_fingerprint(&fpr).unwrap(),
        Some(("hostA".to_string(), true))
    );
    assert_eq!(store.host_by_fingerprint("00").unwrap(), None);
}

#[test]
fn officers_and_escrow() {
    let (mut store, _root, _dir) = new_store();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    store.officer_add("olga", &recipient).unwrap();
    assert!(matches!(
        store.officer_add("bob", "age1nope"),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.officer_add("olga", &recipient),
        Err(StoreError::Exists { .. })
    ));
    assert_eq!(store.officers().unwrap(), [("olga".to_string(), recipient)]);

    let uuid = "0f2b6c4e-1a2b-4c3d-8e9f-00112233aabb";
    let entry = AuditEntry {
        actor: "host:a".into(),
        action: "register".into(),
        target: uuid.into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    assert_eq!(store.volume_owner(uuid).unwrap(), None);
    store
        .with_audit(entry.clone(), |tx, _| register_volume(tx, uuid, "a"))
        .unwrap();
    // Registering again by its owner is a no-op; by another host, refused: the first owner
    // stays.
    store
        .with_audit(entry.clone(), |tx, _| register_volume(tx, uuid, "a"))
        .unwrap();
    assert!(store
        .with_audit(entry.clone(), |tx, _| register_volume(tx, uuid, "b"))
        .is_err());
    assert_eq!(store.volume_owner(uuid).unwrap().as_deref(), Some("a"));
    assert_eq!(store.escrow_package(uuid).unwrap(), None);
    for package in ["first", "second"] {
        store
            .with_audit(entry.clone(), |tx, _| store_escrow(tx, uuid, "a", package))
            .unwrap();
        assert_eq!(
            store.escrow_package(uuid).unwrap().as_deref(),
            Some(package)
        );
    }
}

/// The public point of a new P-256 key, as `nbdcrypt-keyd join` sends it.
fn p256_point() -> Vec<u8> {
    rcgen::KeyPair::generate()
        .unwrap()
        .public_key_raw()
        .to_vec()
}

fn refusal_of(o: JoinOutcome) -> (String, Refusal) {
    match o {
        JoinOutcome::Refused { actor, refusal, .. } => (actor, refusal),
        JoinOutcome::Issued { host, .. } => panic!("issued for {host}"),
    }
}

#[test]
fn join_token_redeemed_once() {
    let (mut store, root, _dir) = new_store();
    let token = store.join_token_add("h1", 3600).unwrap();
    assert!(token.starts_with(JOIN_PREFIX));
    let point = p256_point();
    let JoinOutcome::Issued { host, cert_pem } = store.join_redeem(&root, &token, &point).unwrap()
    else {
        panic!("refused");
    };
    assert_eq!(host, "h1");
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    assert_eq!(
        store.host_by_fingerprint(&pki::fingerprint(&der)).unwrap(),
        Some(("h1".to_string(), false))
    );
    let last = store.audit_list(0, 100).unwrap().pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.target.as_str()
        ),
        ("join:h1", "join", "h1")
    );
    // A second use is refused.
    let o = store.join_redeem(&root, &token, &p256_point()).unwrap();
    assert_eq!(
        refusal_of(o),
        ("join:h1".to_string(), Refusal::JoinTokenUsed)
    );
    // The host exists now: no new token for it.
    assert!(matches!(
        store.join_token_add("h1", 60),
        Err(StoreError::Exists { .. })
    ));
    assert!(audit_ok(&store));
}

fn audit_ok(store: &Store) -> bool {
    store.audit_verify().unwrap().ok
}

#[test]
fn join_refusals() {
    let (mut store, root, _dir) = new_store();
    // (setup on a fresh token for `host`, the point sent, expected actor and refusal)
    type Setup = fn(&mut Store, &RootKey, &Connection, &str);
    let none: Setup = |_, _, _, _| {};
    let expire: Setup = |_, _, db, _| {
        db.execute("UPDATE join_tokens SET expires_ms = 0", [])
            .unwrap();
    };
    let add_host: Setup = |s, root, _, host| {
        s.host_add(root, host).unwrap();
    };
    let mut zero = vec![0u8; 65];
    zero[0] = 4;
    let mut off_curve = p256_point();
    off_curve[64] ^= 1;
    let cases: [(&str, Setup, Vec<u8>, &str, Refusal); 5] = [
        (
            "h2",
            expire,
            p256_point(),
            "join:h2",
            Refusal::JoinTokenExpired,
        ),
        ("h3", add_host, p256_point(), "join:h3", Refusal::HostExists),
        ("h4", none, vec![4u8; 10], "join:h4", Refusal::BadRequest),
        ("h5", none, zero, "join:h5", Refusal::BadRequest),
        ("h6", none, off_curve, "join:h6", Refusal::BadRequest),
    ];
    for (host, setup, point, actor, refusal) in cases {
        let token = store.join_token_add(host, 3600).unwrap();
        let db = raw(&store);
        setup(&mut store, &root, &db, host);
        let o = store.join_redeem(&root, &token, &point).unwrap();
        assert_eq!(refusal_of(o), (actor.to_string(), refusal), "{host}");
    }
    let o = store
        .join_redeem(&root, "nbj_unknown", &p256_point())
        .unwrap();
    assert_eq!(
        refusal_of(o),
        ("anonymous".to_string(), Refusal::BadJoinToken)
    );
    // (ttl seconds, accepted)
    for (ttl, ok) in [
        (0, false),
        (30 * 86400 + 1, false),
        (1, true),
        (30 * 86400, true),
    ] {
        let r = store.join_token_add(&format!("t{ttl}"), ttl);
        assert_eq!(r.is_ok(), ok, "ttl {ttl}");
    }
    assert!(audit_ok(&store));
}

/// The mode bits of `p` (not following a symlink).
fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_database_and_its_wal_and_shm_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (mut store, _root, dir) = new_store();
    let path = dir.path().join("data");
    // A write, so the -wal and -shm files exist while the connection is open.
    store.token_add("t1", Role::Admin).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let f = path.join(format!("{DB_FILE}{suffix}"));
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
    }
    drop(store);
    // A store left world-readable (an earlier version) is made private when opened.
    let db = path.join(DB_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut store = Store::open(&path).unwrap();
    store.token_add("t2", Role::Admin).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let f = path.join(format!("{DB_FILE}{suffix}"));
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn init_does_not_write_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::create_dir(&path).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, path.join(ROOT_KEY_FILE)).unwrap();
    assert!(Store::init(&path, &RootSource::KeyFile, &["localhost".to_string()]).is_err());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}
