//! The HTTPS API of `nbdcrypt-keyd serve` (`docs/keyservice-api.md`): axum routes served by
//! hyper (HTTP/1.1) over rustls (ring provider), TLS only.
//!
//! Identities: a host presents a client certificate issued by the store's CA (optional at the
//! TLS layer, so people can connect with a bearer token instead); it is recognised by the
//! SHA-256 fingerprint of the certificate, and looked up on every request, so `host revoke`
//! takes effect at the next request. People send `Authorization: Bearer nbk_...`.
//!
//! Every key release and every refusal is an audit row committed before the reply is sent;
//! if the audit write fails the request fails with 500 and nothing is released.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::pki;
use super::store::{self, AuditEntry, Role, RootKey, Store, StoreError};
use super::wrap;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A certificate or key file of the data directory is unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state of the handlers.
pub struct App {
    store: Mutex<Store>,
    root: RootKey,
}

/// The client certificate fingerprint of a connection (hex SHA-256), if one was presented.
#[derive(Clone)]
struct Peer(Option<String>);

/// Who is calling.
enum Caller {
    Host(String),
    Person(String, Role),
}

impl Caller {
    fn actor(&self) -> String {
        match self {
            Caller::Host(n) => format!("host:{n}"),
            Caller::Person(n, r) => format!("token:{n}({})", r.as_str()),
        }
    }
}

/// An `application/problem+json` reply (RFC 9457).
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: String,
    audit_seq: Option<i64>,
}

impl Problem {
    fn internal(detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            detail: detail.into(),
            audit_seq: None,
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        tracing::error!("store: {e}");
        Problem::internal(format!("store: {e}"))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:nbdcrypt:keyd:{}", self.kind),
            "title": self.status.canonical_reason().unwrap_or(""),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "audit_seq": self.audit_seq,
        });
        let mut r = (self.status, body.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    }
}

type Reply<T> = Result<Json<T>, Problem>;

impl App {
    /// Writes the refusal's audit row and returns the problem to send (500 if the audit write
    /// itself fails).
    fn refuse(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        status: StatusCode,
        kind: &'static str,
        detail: String,
    ) -> Problem {
        let entry = AuditEntry {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: format!("refused {}: {kind}", status.as_u16()),
            detail: detail.clone(),
        };
        match self.store.lock().unwrap().audit(entry) {
            Ok(seq) => Problem {
                status,
                kind,
                detail,
                audit_seq: Some(seq),
            },
            Err(e) => Problem::internal(format!("audit write failed: {e}")),
        }
    }

    /// Identifies the caller, or refuses (audited).
    fn identify(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        action: &str,
        target: &str,
    ) -> Result<Caller, Problem> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(fpr) = &peer.0 {
            let found = self.store.lock().unwrap().host_by_fingerprint(fpr)?;
            return match found {
                Some((name, false)) => Ok(Caller::Host(name)),
                Some((name, true)) => Err(self.refuse(
                    &format!("host:{name}"),
                    action,
                    target,
                    StatusCode::FORBIDDEN,
                    "host-revoked",
                    format!("host {name} is revoked"),
                )),
                None => Err(self.refuse(
                    "anonymous",
                    action,
                    target,
                    StatusCode::FORBIDDEN,
                    "unknown-host",
                    format!("no host has the client certificate {fpr}"),
                )),
            };
        }
        match bearer {
            Some(t) => {
                let found = self.store.lock().unwrap().token_lookup(t)?;
                match found {
                    Some((name, role)) => Ok(Caller::Person(name, role)),
                    None => Err(self.refuse(
                        "anonymous",
                        action,
                        target,
                        StatusCode::UNAUTHORIZED,
                        "bad-token",
                        "unknown or revoked bearer token".into(),
                    )),
                }
            }
            None => Err(self.refuse(
                "anonymous",
                action,
                target,
                StatusCode::UNAUTHORIZED,
                "no-credentials",
                "no client certificate and no bearer token".into(),
            )),
        }
    }

    /// Identifies a host, refusing people (audited).
    fn host(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        action: &str,
        target: &str,
    ) -> Result<String, Problem> {
        match self.identify(peer, headers, action, target)? {
            Caller::Host(n) => Ok(n),
            p @ Caller::Person(..) => Err(self.refuse(
                &p.actor(),
                action,
                target,
                StatusCode::FORBIDDEN,
                "hosts-only",
                format!("{action} is for hosts (client certificate), not bearer tokens"),
            )),
        }
    }

    /// Identifies a person of one of `roles`, refusing others (audited).
    fn person(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        action: &str,
        target: &str,
        roles: &[Role],
    ) -> Result<String, Problem> {
        let c = self.identify(peer, headers, action, target)?;
        match &c {
            Caller::Person(n, r) if roles.contains(r) => Ok(n.clone()),
            _ => Err(self.refuse(
                &c.actor(),
                action,
                target,
                StatusCode::FORBIDDEN,
                "role",
                format!(
                    "{action} needs role {}",
                    roles
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            )),
        }
    }

    /// Checks that `uuid` is registered to `host` (audited refusals).
    fn owned(&self, host: &str, uuid: &str, action: &str) -> Result<(), Problem> {
        let actor = format!("host:{host}");
        let owner = self.store.lock().unwrap().volume_owner(uuid)?;
        match owner {
            Some(o) if o == host => Ok(()),
            Some(o) => Err(self.refuse(
                &actor,
                action,
                uuid,
                StatusCode::FORBIDDEN,
                "not-owner",
                format!("volume {uuid} belongs to host {o}"),
            )),
            None => Err(self.refuse(
                &actor,
                action,
                uuid,
                StatusCode::NOT_FOUND,
                "unknown-volume",
                format!("volume {uuid} is not registered"),
            )),
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        body: &[u8],
    ) -> Result<T, Problem> {
        serde_json::from_slice(body).map_err(|e| {
            self.refuse(
                actor,
                action,
                target,
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("request body: {e}"),
            )
        })
    }
}

fn check_uuid(app: &App, uuid: &str, action: &str) -> Result<(), Problem> {
    let ok = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(app.refuse(
            "anonymous",
            action,
            "",
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("{uuid:?} is not a volume UUID"),
        ))
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    app: Arc<App>,
    f: impl FnOnce(&App) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .unwrap_or_else(|_| Err(Problem::internal("worker failed")))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "service": "nbdcrypt-keyd", "version": env!("CARGO_PKG_VERSION")}))
}

#[derive(Deserialize)]
struct RegisterReq {
    uuid: String,
}

async fn register(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply<serde_json::Value> {
    blocking(app, move |app| {
        let host = app.host(&peer, &headers, "register", "")?;
        let actor = format!("host:{host}");
        let req: RegisterReq = app.parse(&actor, "register", "", &body)?;
        check_uuid(app, &req.uuid, "register")?;
        let owner = app.store.lock().unwrap().volume_owner(&req.uuid)?;
        match owner {
            Some(o) if o != host => Err(app.refuse(
                &actor,
                "register",
                &req.uuid,
                StatusCode::CONFLICT,
                "not-owner",
                format!("volume {} belongs to host {o}", req.uuid),
            )),
            _ => {
                let entry = AuditEntry {
                    actor,
                    action: "register".into(),
                    target: req.uuid.clone(),
                    outcome: "ok".into(),
                    detail: String::new(),
                };
                app.store
                    .lock()
                    .unwrap()
                    .with_audit(entry, |tx, _| store::register_volume(tx, &req.uuid, &host))?;
                Ok(Json(json!({"uuid": req.uuid, "owner": host})))
            }
        }
    })
    .await
}

#[derive(Deserialize)]
struct WrapReq {
    slot: u32,
    kek: String,
    secret: super::client::SecretString,
}

#[derive(Serialize)]
struct WrapResp {
    kek: String,
    version: u32,
    blob: String,
}

/// The current version of `kek` and its material, or a refusal.
fn current_kek(
    app: &App,
    actor: &str,
    action: &str,
    uuid: &str,
    kek: &str,
) -> Result<(u32, Zeroizing<Vec<u8>>), Problem> {
    let st = app.store.lock().unwrap();
    let info = match st.kek_show(kek) {
        Ok(i) => i,
        Err(StoreError::NotFound { .. }) => {
            drop(st);
            return Err(app.refuse(
                actor,
                action,
                uuid,
                StatusCode::NOT_FOUND,
                "unknown-kek",
                format!("no KEK named {kek:?}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let m = st
        .kek_material(&app.root, kek, info.current)?
        .ok_or_else(|| Problem::internal("current KEK version missing"))?;
    Ok((info.current, m))
}

async fn wrap_secret(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Reply<WrapResp> {
    blocking(app, move |app| {
        check_uuid(app, &uuid, "wrap")?;
        let host = app.host(&peer, &headers, "wrap", &uuid)?;
        let actor = format!("host:{host}");
        app.owned(&host, &uuid, "wrap")?;
        let req: WrapReq = app.parse(&actor, "wrap", &uuid, &body)?;
        let secret = Zeroizing::new(B64.decode(req.secret.0.as_bytes()).unwrap_or_default());
        if secret.is_empty() || secret.len() > 64 {
            return Err(app.refuse(
                &actor,
                "wrap",
                &uuid,
                StatusCode::BAD_REQUEST,
                "bad-request",
                "secret must be 1 to 64 bytes of base64".into(),
            ));
        }
        let (version, kek) = current_kek(app, &actor, "wrap", &uuid, &req.kek)?;
        let blob = wrap::seal(
            &kek,
            &wrap::keyslot_aad(&uuid, req.slot, &req.kek, version),
            &secret,
        )
        .map_err(|e| Problem::internal(e.to_string()))?;
        let entry = AuditEntry {
            actor,
            action: "wrap".into(),
            target: uuid.clone(),
            outcome: "ok".into(),
            detail: format!("keyslot {} KEK {} version {version}", req.slot, req.kek),
        };
        app.store.lock().unwrap().with_audit(entry, |tx, _| {
            store::record_usage(tx, &uuid, req.slot, &req.kek, version)
        })?;
        Ok(Json(WrapResp {
            kek: req.kek,
            version,
            blob: B64.encode(blob),
        }))
    })
    .await
}

#[derive(Deserialize)]
struct UnwrapReq {
    slot: u32,
    kek: String,
    version: u32,
    blob: String,
}

#[derive(Serialize)]
struct UnwrapResp {
    secret: super::client::SecretString,
    current_version: u32,
}

async fn unwrap_secret(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Reply<UnwrapResp> {
    blocking(app, move |app| {
        check_uuid(app, &uuid, "unwrap")?;
        let host = app.host(&peer, &headers, "unwrap", &uuid)?;
        let actor = format!("host:{host}");
        app.owned(&host, &uuid, "unwrap")?;
        let req: UnwrapReq = app.parse(&actor, "unwrap", &uuid, &body)?;
        let what = format!(
            "keyslot {} KEK {} version {}",
            req.slot, req.kek, req.version
        );
        let refuse = |status, kind, detail: String| {
            app.refuse(
                &actor,
                "unwrap",
                &uuid,
                status,
                kind,
                format!("{what}: {detail}"),
            )
        };
        let info = match app.store.lock().unwrap().kek_show(&req.kek) {
            Ok(i) => Some(i),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(info) = info else {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "unknown-kek",
                "no such KEK".into(),
            ));
        };
        if req.version < info.min_unwrap_version {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "version-retired",
                format!(
                    "versions below {} no longer unwrap",
                    info.min_unwrap_version
                ),
            ));
        }
        let material = app
            .store
            .lock()
            .unwrap()
            .kek_material(&app.root, &req.kek, req.version)?;
        let Some(material) = material else {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "unknown-kek-version",
                "no such KEK version".into(),
            ));
        };
        let blob = B64.decode(req.blob.as_bytes()).unwrap_or_default();
        let aad = wrap::keyslot_aad(&uuid, req.slot, &req.kek, req.version);
        let secret = match wrap::open(&material, &aad, &blob) {
            Ok(s) => s,
            Err(_) => {
                return Err(refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "binding",
                    "the blob does not open for this volume, keyslot and KEK version".into(),
                ))
            }
        };
        let entry = AuditEntry {
            actor: actor.clone(),
            action: "unwrap".into(),
            target: uuid.clone(),
            outcome: "ok".into(),
            detail: what.clone(),
        };
        // The audit row is committed before the secret leaves.
        app.store.lock().unwrap().with_audit(entry, |tx, _| {
            store::record_usage(tx, &uuid, req.slot, &req.kek, req.version)
        })?;
        Ok(Json(UnwrapResp {
            secret: super::client::SecretString(Zeroizing::new(B64.encode(&secret[..]))),
            current_version: info.current,
        }))
    })
    .await
}

#[derive(Deserialize)]
struct EscrowReq {
    package: String,
}

async fn escrow_store(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Reply<serde_json::Value> {
    blocking(app, move |app| {
        check_uuid(app, &uuid, "escrow-store")?;
        let host = app.host(&peer, &headers, "escrow-store", &uuid)?;
        let actor = format!("host:{host}");
        app.owned(&host, &uuid, "escrow-store")?;
        let req: EscrowReq = app.parse(&actor, "escrow-store", &uuid, &body)?;
        if !req
            .package
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
        {
            return Err(app.refuse(
                &actor,
                "escrow-store",
                &uuid,
                StatusCode::BAD_REQUEST,
                "bad-request",
                "the package must be an armored age file".into(),
            ));
        }
        let entry = AuditEntry {
            actor,
            action: "escrow-store".into(),
            target: uuid.clone(),
            outcome: "ok".into(),
            detail: format!("{} bytes", req.package.len()),
        };
        app.store.lock().unwrap().with_audit(entry, |tx, _| {
            store::store_escrow(tx, &uuid, &host, &req.package)
        })?;
        Ok(Json(json!({"uuid": uuid, "stored": true})))
    })
    .await
}

async fn escrow_fetch(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
) -> Reply<serde_json::Value> {
    blocking(app, move |app| {
        check_uuid(app, &uuid, "escrow-fetch")?;
        let who = app.person(&peer, &headers, "escrow-fetch", &uuid, &[Role::Officer])?;
        let actor = format!("token:{who}(officer)");
        let entry = AuditEntry {
            actor: actor.clone(),
            action: "escrow-fetch".into(),
            target: uuid.clone(),
            outcome: "ok".into(),
            detail: String::new(),
        };
        let mut st = app.store.lock().unwrap();
        let pkg = st.escrow_package(&uuid)?;
        match pkg {
            Some(p) => {
                st.with_audit(entry, |_, _| Ok(()))?;
                Ok(Json(json!({"uuid": uuid, "package": p})))
            }
            None => {
                drop(st);
                Err(app.refuse(
                    &actor,
                    "escrow-fetch",
                    &uuid,
                    StatusCode::NOT_FOUND,
                    "no-escrow",
                    format!("no escrow package for volume {uuid}"),
                ))
            }
        }
    })
    .await
}

async fn officers(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Reply<serde_json::Value> {
    blocking(app, move |app| {
        app.identify(&peer, &headers, "officers", "")?;
        let list = app.store.lock().unwrap().officers()?;
        let list: Vec<_> = list
            .into_iter()
            .map(|(n, r)| json!({"name": n, "recipient": r}))
            .collect();
        Ok(Json(json!({ "officers": list })))
    })
    .await
}

async fn kek_show(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Reply<store::KekInfo> {
    blocking(app, move |app| {
        let who = app.person(
            &peer,
            &headers,
            "kek-show",
            &name,
            &[Role::Admin, Role::Auditor],
        )?;
        let r = app.store.lock().unwrap().kek_show(&name);
        match r {
            Ok(i) => Ok(Json(i)),
            Err(StoreError::NotFound { .. }) => Err(app.refuse(
                &format!("token:{who}"),
                "kek-show",
                &name,
                StatusCode::NOT_FOUND,
                "unknown-kek",
                format!("no KEK named {name:?}"),
            )),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn audit_list(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Reply<serde_json::Value> {
    blocking(app, move |app| {
        app.person(
            &peer,
            &headers,
            "audit-list",
            "",
            &[Role::Admin, Role::Auditor],
        )?;
        let rows = app.store.lock().unwrap().audit_list(
            q.after.unwrap_or(0),
            q.limit.unwrap_or(1000).clamp(1, 10000),
        )?;
        Ok(Json(json!({ "rows": rows })))
    })
    .await
}

async fn audit_verify(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Reply<store::VerifyReport> {
    blocking(app, move |app| {
        app.person(
            &peer,
            &headers,
            "audit-verify",
            "",
            &[Role::Admin, Role::Auditor],
        )?;
        Ok(Json(app.store.lock().unwrap().audit_verify()?))
    })
    .await
}

#[derive(Deserialize)]
struct JoinReq {
    token: super::client::SecretString,
    public_key: String,
}

/// `POST /v1/join`: a host without a certificate redeems a one-time join token with its own
/// P-256 public key ([`Store::join_redeem`]); every outcome is an audit row.
async fn join(State(app): State<Arc<App>>, body: Bytes) -> Reply<serde_json::Value> {
    blocking(app, move |app| {
        let req: JoinReq = app.parse("anonymous", "join", "", &body)?;
        let point = B64.decode(req.public_key.as_bytes()).unwrap_or_default();
        let outcome = app
            .store
            .lock()
            .unwrap()
            .join_redeem(&app.root, &req.token.0, &point)?;
        match outcome {
            store::JoinOutcome::Issued { host, cert_pem } => {
                Ok(Json(json!({"host": host, "certificate": cert_pem})))
            }
            store::JoinOutcome::Refused {
                actor,
                status,
                kind,
                detail,
            } => {
                let target = actor.strip_prefix("join:").unwrap_or("").to_string();
                Err(app.refuse(
                    &actor,
                    "join",
                    &target,
                    StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                    kind,
                    detail,
                ))
            }
        }
    })
    .await
}

async fn not_found() -> Problem {
    Problem {
        status: StatusCode::NOT_FOUND,
        kind: "no-such-endpoint",
        detail: "no such endpoint (see docs/keyservice-api.md)".into(),
        audit_seq: None,
    }
}

/// The API routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/join", post(join))
        .route("/v1/volumes", post(register))
        .route("/v1/volumes/{uuid}/wrap", post(wrap_secret))
        .route("/v1/volumes/{uuid}/unwrap", post(unwrap_secret))
        .route(
            "/v1/volumes/{uuid}/escrow",
            get(escrow_fetch).put(escrow_store),
        )
        .route("/v1/officers", get(officers))
        .route("/v1/keks/{name}", get(kek_show))
        .route("/v1/audit", get(audit_list))
        .route("/v1/audit/verify", get(audit_verify))
        .fallback(not_found)
        .with_state(app)
}

/// The rustls configuration: `server.pem`/`server.key`, client certificates optional and, when
/// presented, checked against `ca.pem`.
///
/// Errors: [`ServeError::Tls`].
pub fn tls_config(dir: &Path) -> Result<Arc<ServerConfig>, ServeError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(store::SERVER_CERT_FILE))
            .map_err(|e| tls(store::SERVER_CERT_FILE, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| tls(store::SERVER_CERT_FILE, &e))?;
    let key = PrivateKeyDer::from_pem_file(dir.join(store::SERVER_KEY_FILE))
        .map_err(|e| tls(store::SERVER_KEY_FILE, &e))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join(store::CA_FILE))
        .map_err(|e| tls(store::CA_FILE, &e))?
    {
        roots
            .add(c.map_err(|e| tls(store::CA_FILE, &e))?)
            .map_err(|e| tls(store::CA_FILE, &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls("client verifier", &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls("certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listen` until SIGINT or SIGTERM. Prints `listening on https://ADDR`
/// to stderr once the socket is bound (port 0 picks a free port, printed).
///
/// Errors: [`ServeError`] before serving starts.
pub async fn serve(store: Store, root: RootKey, listen: &str) -> Result<(), ServeError> {
    let acceptor = TlsAcceptor::from(tls_config(store.dir())?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen.into(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen.into(),
        source,
    })?;
    eprintln!("nbdcrypt-keyd: listening on https://{local}");
    let app = Arc::new(App {
        store: Mutex::new(store),
        root,
    });
    let routes = router(app);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServeError::Tls(format!("signal handler: {e}")))?;
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let acceptor = acceptor.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!("{addr}: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("{addr}: TLS handshake timed out");
                        return;
                    }
                };
            let fpr = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| pki::fingerprint(c));
            let svc = TowerToHyperService::new(routes.layer(Extension(Peer(fpr))));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!("{addr}: {e}");
            }
        });
    }
    eprintln!("nbdcrypt-keyd: stopped");
    Ok(())
}
