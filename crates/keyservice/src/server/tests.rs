//! The routes driven in process, without TLS or a socket: a request goes through the router
//! with the peer's certificate fingerprint set as the accept loop sets it, and the reply's
//! status, bytes and audit row are checked against [`Refusal`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, Request};
use axum::Extension;
use http_body_util::BodyExt;
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;

use super::app::{App, Peer};
use super::routes::router;
use crate::api::ProblemBody;
use crate::pki;
use crate::refusal::Refusal;
use crate::store::{AuditRow, Role, RootSource, Store};

const UUID: &str = "0f2b6c4e-1a2b-4c3d-8e9f-00112233aabb";

struct Fixture {
    app: Arc<App>,
    host_a: String,
    host_b: String,
    officer: String,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// Who calls: a host's certificate fingerprint, a bearer token, or nothing.
enum Who<'a> {
    Cert(&'a str),
    Token(&'a str),
    Nobody,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    Store::init(&path, &RootSource::KeyFile, &["localhost".to_string()]).unwrap();
    let mut store = Store::open(&path).unwrap();
    let root = store.unlock(None).unwrap();
    let host_a = pki::fingerprint(&store.host_add(&root, "hostA").unwrap().cert_der);
    let host_b = pki::fingerprint(&store.host_add(&root, "hostB").unwrap().cert_der);
    let officer = store.token_add("olga", Role::Officer).unwrap().to_string();
    store.kek_create(&root, "k").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        app: Arc::new(App::new(store, root)),
        host_a,
        host_b,
        officer,
        rt,
        _dir: dir,
    }
}

impl Fixture {
    /// `method path` with `body` as `who`: the status and the body text.
    fn call(&self, who: Who<'_>, method: &str, path: &str, body: &str) -> (u16, String, String) {
        let fpr = match who {
            Who::Cert(f) => Some(f.to_string()),
            _ => None,
        };
        let mut req = Request::builder().method(method).uri(path);
        if let Who::Token(t) = who {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Body::from(Bytes::from(body.to_string()))).unwrap();
        let svc = TowerToHyperService::new(
            router(self.app.clone()).layer(Extension(Peer::new(fpr, None))),
        );
        self.rt.block_on(async {
            let resp = svc.call(req).await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, ctype, String::from_utf8(bytes.to_vec()).unwrap())
        })
    }

    fn last_row(&self) -> AuditRow {
        let st = self.app.store.lock().unwrap();
        st.audit_list(0, i64::MAX).unwrap().pop().unwrap()
    }
}

#[test]
fn refusals_have_their_status_type_and_audit_row() {
    let f = fixture();
    let (status, _, _) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        "/v1/volumes",
        &format!(r#"{{"uuid":"{UUID}"}}"#),
    );
    assert_eq!(status, 200);
    let wrap = format!("/v1/volumes/{UUID}/wrap");
    let unwrap = format!("/v1/volumes/{UUID}/unwrap");
    let escrow = format!("/v1/volumes/{UUID}/escrow");
    let register = format!(r#"{{"uuid":"{UUID}"}}"#);
    let join = format!(
        r#"{{"token":"nbj_nope","public_key":"{}"}}"#,
        "A".repeat(88)
    );
    // (caller, method, path, body, refusal, audit actor, detail)
    let cases: Vec<(Who, &str, &str, &str, Refusal, &str, String)> = vec![
        (
            Who::Nobody,
            "GET",
            "/v1/officers",
            "",
            Refusal::NoCredentials,
            "anonymous",
            "no client certificate and no bearer token".into(),
        ),
        (
            Who::Token("nbk_wrong"),
            "GET",
            "/v1/officers",
            "",
            Refusal::BadToken,
            "anonymous",
            "unknown or revoked bearer token".into(),
        ),
        (
            Who::Cert("00ff"),
            "GET",
            "/v1/officers",
            "",
            Refusal::UnknownHost,
            "anonymous",
            "no host has the client certificate 00ff".into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            "/v1/volumes",
            r#""x""#,
            Refusal::BadRequest,
            "host:hostA",
            r#"request body: invalid type: string "x", expected struct RegisterReq at line 1 column 3"#
                .into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            &wrap,
            "[]",
            Refusal::BadRequest,
            "host:hostA",
            "request body: invalid length 0, expected struct WrapReq with 3 elements at line 1 column 2"
                .into(),
        ),
        (
            Who::Cert(&f.host_b),
            "POST",
            "/v1/volumes",
            &register,
            Refusal::VolumeTaken,
            "host:hostB",
            format!(
                "volume {UUID} is registered to host hostA; if it is this host's volume, ask \
                 the key service's administrator to run `nbdcrypt-keyd volume assign {UUID} \
                 --host hostB`"
            ),
        ),
        (
            Who::Cert(&f.host_b),
            "POST",
            &wrap,
            r#"{"slot":0,"kek":"k","secret":"AAAA"}"#,
            Refusal::NotOwner,
            "host:hostB",
            format!("volume {UUID} belongs to host hostA"),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            "/v1/volumes/0f2b6c4e-1a2b-4c3d-8e9f-00112233aabc/wrap",
            r#"{"slot":0,"kek":"k","secret":"AAAA"}"#,
            Refusal::UnknownVolume,
            "host:hostA",
            "volume 0f2b6c4e-1a2b-4c3d-8e9f-00112233aabc is not registered".into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            "/v1/volumes/not-a-uuid/wrap",
            "{}",
            Refusal::BadRequest,
            "anonymous",
            r#""not-a-uuid" is not a volume UUID"#.into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            &wrap,
            r#"{"slot":0,"kek":"nope","secret":"AAAA"}"#,
            Refusal::UnknownKek,
            "host:hostA",
            r#"no KEK named "nope""#.into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            &wrap,
            r#"{"slot":0,"kek":"k","secret":""}"#,
            Refusal::BadRequest,
            "host:hostA",
            "secret must be 1 to 64 bytes of base64".into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            &unwrap,
            r#"{"slot":0,"kek":"k","version":1,"blob":"AAAA"}"#,
            Refusal::Binding,
            "host:hostA",
            "keyslot 0 KEK k version 1: the blob does not open for this volume, keyslot and KEK version"
                .into(),
        ),
        (
            Who::Cert(&f.host_a),
            "POST",
            &unwrap,
            r#"{"slot":0,"kek":"k","version":9,"blob":"AAAA"}"#,
            Refusal::UnknownKekVersion,
            "host:hostA",
            "keyslot 0 KEK k version 9: no such KEK version".into(),
        ),
        (
            Who::Token(&f.officer),
            "POST",
            &unwrap,
            r#"{"slot":0,"kek":"k","version":1,"blob":"AAAA"}"#,
            Refusal::HostsOnly,
            "token:olga(officer)",
            "unwrap is for hosts (client certificate), not bearer tokens".into(),
        ),
        (
            Who::Cert(&f.host_a),
            "GET",
            &escrow,
            "",
            Refusal::Role,
            "host:hostA",
            "escrow-fetch needs role officer".into(),
        ),
        (
            Who::Token(&f.officer),
            "GET",
            &escrow,
            "",
            Refusal::NoEscrow,
            "token:olga(officer)",
            format!("no escrow package for volume {UUID}"),
        ),
        (
            Who::Cert(&f.host_a),
            "PUT",
            &escrow,
            r#"{"package":"plain text"}"#,
            Refusal::BadRequest,
            "host:hostA",
            "the package must be an armored age file".into(),
        ),
        (
            Who::Nobody,
            "POST",
            "/v1/join",
            &join,
            Refusal::BadJoinToken,
            "anonymous",
            "unknown join token".into(),
        ),
    ];
    for (who, method, path, body, refusal, actor, detail) in cases {
        let (status, ctype, text) = f.call(who, method, path, body);
        let what = format!("{method} {path} {body}: {text}");
        assert_eq!(status, refusal.status(), "{what}");
        assert_eq!(ctype, "application/problem+json", "{what}");
        let p: ProblemBody = serde_json::from_str(&text).unwrap();
        assert_eq!(p.problem_type, refusal.problem_type(), "{what}");
        assert_eq!(p.status, refusal.status(), "{what}");
        assert_eq!(p.detail, detail, "{what}");
        let row = f.last_row();
        assert_eq!(p.audit_seq, Some(row.seq), "{what}");
        assert_eq!(row.actor, actor, "{what}");
        assert_eq!(Some(row.outcome), refusal.audit_outcome(), "{what}");
        assert_eq!(row.detail, detail, "{what}");
    }
}

#[test]
fn replies_are_byte_for_byte() {
    let f = fixture();
    let seq = f.last_row().seq;
    let (status, ctype, text) = f.call(Who::Nobody, "GET", "/v1/audit", "");
    assert_eq!((status, ctype.as_str()), (401, "application/problem+json"));
    assert_eq!(
        text,
        format!(
            r#"{{"type":"urn:nbdcrypt:keyd:no-credentials","title":"Unauthorized","status":401,"detail":"no client certificate and no bearer token","audit_seq":{}}}"#,
            seq + 1
        )
    );
    let (status, _, text) = f.call(Who::Nobody, "GET", "/v1/nothing", "");
    assert_eq!(status, 404);
    assert_eq!(
        text,
        r#"{"type":"urn:nbdcrypt:keyd:no-such-endpoint","title":"Not Found","status":404,"detail":"no such endpoint (see docs/keyservice-api.md)","audit_seq":null}"#
    );
    assert_eq!(f.last_row().seq, seq + 1, "no-such-endpoint is not audited");
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        "/v1/volumes",
        &format!(r#"{{"uuid":"{UUID}"}}"#),
    );
    assert_eq!(status, 200);
    assert_eq!(text, format!(r#"{{"uuid":"{UUID}","owner":"hostA"}}"#));
    let (_, _, text) = f.call(Who::Token(&f.officer), "GET", "/v1/officers", "");
    assert_eq!(text, r#"{"officers":[]}"#);
    let (_, _, text) = f.call(Who::Nobody, "GET", "/v1/health", "");
    assert_eq!(
        text,
        format!(
            r#"{{"status":"ok","service":"nbdcrypt-keyd","version":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn wrap_then_unwrap_then_rewrap_after_rotation() {
    let f = fixture();
    f.call(
        Who::Cert(&f.host_a),
        "POST",
        "/v1/volumes",
        &format!(r#"{{"uuid":"{UUID}"}}"#),
    );
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        &format!("/v1/volumes/{UUID}/wrap"),
        r#"{"slot":2,"kek":"k","secret":"c2VjcmV0"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let w: crate::api::WrapReply = serde_json::from_str(&text).unwrap();
    assert_eq!((w.kek.as_str(), w.version), ("k", 1));
    {
        let mut st = f.app.store.lock().unwrap();
        st.kek_rotate(&f.app.root, "k").unwrap();
    }
    let body = format!(r#"{{"slot":2,"kek":"k","version":1,"blob":"{}"}}"#, w.blob);
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        &format!("/v1/volumes/{UUID}/unwrap"),
        &body,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, r#"{"secret":"c2VjcmV0","current_version":2}"#);
    let row = f.last_row();
    assert_eq!(
        (
            row.action.as_str(),
            row.outcome.as_str(),
            row.detail.as_str()
        ),
        ("unwrap", "ok", "keyslot 2 KEK k version 1")
    );
    // The version retired: refused.
    f.app
        .store
        .lock()
        .unwrap()
        .kek_set_min_unwrap("k", 2)
        .unwrap();
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        &format!("/v1/volumes/{UUID}/unwrap"),
        &body,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("urn:nbdcrypt:keyd:version-retired"), "{text}");
    assert!(f.app.store.lock().unwrap().audit_verify().unwrap().ok);
}

#[test]
fn a_volume_uuid_has_one_spelling() {
    let f = fixture();
    let upper = UUID.to_ascii_uppercase();
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        "/v1/volumes",
        &format!(r#"{{"uuid":"{upper}"}}"#),
    );
    assert_eq!(status, 200, "{text}");
    // Registered, answered and audited in lower case.
    assert!(text.contains(UUID), "{text}");
    assert_eq!(f.last_row().target, UUID);
    assert_eq!(
        f.app.store.lock().unwrap().volume_owner(UUID).unwrap(),
        Some("hostA".to_string())
    );
    // Another host cannot register the same volume under another spelling.
    for spelling in [UUID.to_string(), upper.clone()] {
        let (status, _, text) = f.call(
            Who::Cert(&f.host_b),
            "POST",
            "/v1/volumes",
            &format!(r#"{{"uuid":"{spelling}"}}"#),
        );
        assert_eq!(status, 409, "{spelling}: {text}");
    }
    // A wrap under one spelling unwraps under the other.
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        &format!("/v1/volumes/{upper}/wrap"),
        r#"{"slot":2,"kek":"k","secret":"c2VjcmV0"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let w: crate::api::WrapReply = serde_json::from_str(&text).unwrap();
    let body = format!(r#"{{"slot":2,"kek":"k","version":1,"blob":"{}"}}"#, w.blob);
    let (status, _, text) = f.call(
        Who::Cert(&f.host_a),
        "POST",
        &format!("/v1/volumes/{UUID}/unwrap"),
        &body,
    );
    assert_eq!(status, 200, "{text}");
}

#[test]
fn join_issues_certificates_only_for_points_on_p256() {
    use base64::Engine;
    let f = fixture();
    let token = f
        .app
        .store
        .lock()
        .unwrap()
        .join_token_add("hostJ", 600)
        .unwrap();
    let body = |point: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(point);
        format!(r#"{{"token":"{}","public_key":"{b64}"}}"#, &*token)
    };
    for (what, point) in pki::tests::bad_points() {
        let (status, _, text) = f.call(Who::Nobody, "POST", "/v1/join", &body(&point));
        assert_eq!(status, 400, "{what}: {text}");
        let p: ProblemBody = serde_json::from_str(&text).unwrap();
        assert_eq!(p.problem_type, Refusal::BadRequest.problem_type(), "{what}");
        let row = f.last_row();
        assert_eq!(row.actor, "join:hostJ", "{what}");
        assert_eq!(
            Some(row.outcome),
            Refusal::BadRequest.audit_outcome(),
            "{what}"
        );
    }
    // The token was not spent on the refused keys: a real key still redeems it.
    let valid = rcgen::KeyPair::generate().unwrap();
    let (status, _, text) = f.call(
        Who::Nobody,
        "POST",
        "/v1/join",
        &body(valid.public_key_raw()),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hostJ"), "{text}");
}
