//! The server's audit bounds driven in process (no TLS, no socket): a long path from an
//! unauthenticated caller is capped in its row, a flood of unauthenticated refusals from one
//! source becomes a bounded number of rows with the count, authenticated refusals stay one
//! row each, and checkpoints are written by the tick and at shutdown.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::Extension;
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;

use super::app::{App, Peer};
use super::routes::router;
use crate::pki;
use crate::store::{AuditPolicy, AuditRow, RootSource, Store, FIELD_CAP};

struct Fixture {
    app: Arc<App>,
    host: String,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture(policy: AuditPolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    Store::init(&path, &RootSource::KeyFile, &["localhost".to_string()]).unwrap();
    let mut store = Store::open(&path).unwrap();
    let root = store.unlock(None).unwrap();
    let host = pki::fingerprint(&store.host_add(&root, "hostA").unwrap().cert_der);
    store.set_audit_policy(policy);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        app: Arc::new(App::new(store, root)),
        host,
        rt,
        _dir: dir,
    }
}

impl Fixture {
    /// `GET path` from `ip`, with the client certificate `fpr` if given: status and body.
    fn get(&self, fpr: Option<&str>, ip: &str, path: &str) -> (u16, Value) {
        let ip: IpAddr = ip.parse().unwrap();
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .body(Body::from(Bytes::new()))
            .unwrap();
        let peer = Peer::new(fpr.map(str::to_string), Some(ip));
        let svc = TowerToHyperService::new(router(self.app.clone()).layer(Extension(peer)));
        self.rt.block_on(async {
            use http_body_util::BodyExt;
            let resp = svc.call(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    }

    fn rows(&self) -> Vec<AuditRow> {
        let st = self.app.store.lock().unwrap();
        st.audit_list(0, i64::MAX).unwrap()
    }
}

#[test]
fn a_60_kb_unauthenticated_path_is_capped_in_its_row() {
    let f = fixture(AuditPolicy::default());
    let long = "a".repeat(60_000);
    for path in [
        format!("/v1/volumes/{long}/escrow"),
        format!("/v1/keks/{long}"),
    ] {
        let (status, body) = f.get(None, "192.0.2.7", &path);
        assert!(status == 400 || status == 401, "{status} {body}");
        let seq = body["audit_seq"]
            .as_i64()
            .expect("first refusal is written");
        let row = f.rows().into_iter().find(|r| r.seq == seq).unwrap();
        for field in [
            &row.actor,
            &row.action,
            &row.target,
            &row.outcome,
            &row.detail,
        ] {
            assert!(
                field.len() <= FIELD_CAP,
                "{} bytes: {path:.40}",
                field.len()
            );
        }
        assert!(
            format!("{}{}", row.target, row.detail).contains("bytes, sha256 "),
            "{row:?}"
        );
    }
    assert!(f.app.store.lock().unwrap().audit_verify().unwrap().ok);
}

#[test]
fn a_thousand_anonymous_refusals_from_one_source_are_a_few_rows() {
    let f = fixture(AuditPolicy::default());
    let before = f.rows().len();
    let mut with_seq = 0;
    for _ in 0..1000 {
        let (status, body) = f.get(None, "192.0.2.7", "/v1/officers");
        assert_eq!(status, 401);
        with_seq += usize::from(body["audit_seq"].is_i64());
    }
    assert_eq!(with_seq, 1);
    assert_eq!(f.rows().len(), before + 1);
    // Another source is its own window: written at once.
    let (_, body) = f.get(None, "198.51.100.1", "/v1/officers");
    assert!(body["audit_seq"].is_i64(), "{body}");
    // At shutdown the count is written, then a checkpoint seals the log.
    f.app.shutdown();
    let rows = f.rows();
    assert!(rows.len() <= before + 4, "{} rows", rows.len() - before);
    let agg = rows
        .iter()
        .find(|r| r.detail.starts_with("×999 more from ip:192.0.2.7"))
        .unwrap_or_else(|| panic!("no ×999 row in {rows:#?}"));
    assert_eq!(agg.outcome, "refused 401: no-credentials");
    let last = rows.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("server", "checkpoint")
    );
    let r = f.app.store.lock().unwrap().audit_verify().unwrap();
    assert!(r.ok && r.unsealed == 0, "{r:?}");
}

#[test]
fn authenticated_refusals_stay_one_row_each() {
    let f = fixture(AuditPolicy::default());
    let before = f.rows().len();
    let path = "/v1/volumes/0f2b6c4e-1a2b-4c3d-8e9f-00112233aabb/escrow";
    for _ in 0..20 {
        let (status, body) = f.get(Some(&f.host), "192.0.2.7", path);
        assert_eq!(status, 403, "{body}");
        assert!(body["audit_seq"].is_i64(), "{body}");
    }
    assert_eq!(f.rows().len(), before + 20);
}

#[test]
fn the_tick_writes_ended_windows_and_checkpoints() {
    let f = fixture(AuditPolicy {
        checkpoint_rows: 3,
        ..AuditPolicy::default()
    });
    f.get(None, "192.0.2.7", "/v1/officers");
    f.get(None, "192.0.2.7", "/v1/officers");
    // Rows 1 (init), 2 (host-add), 3 (the refusal): 3 rows since no checkpoint.
    f.app.audit_tick(0);
    let rows = f.rows();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].action, "checkpoint");
    // The window ends: its count is written; one row is not enough for a checkpoint.
    f.app.audit_tick(i64::MAX / 2);
    let rows = f.rows();
    assert_eq!(rows.len(), 5);
    assert!(rows[4].detail.starts_with("×1 more"), "{:?}", rows[4]);
}

#[test]
fn only_callers_without_an_identity_are_aggregated() {
    use super::audit::unauthenticated;
    assert!(unauthenticated("anonymous"));
    assert!(unauthenticated("join:hostJ"));
    for actor in ["host:hostA", "token:olga(officer)", "cli", "server"] {
        assert!(!unauthenticated(actor), "{actor}");
    }
}
