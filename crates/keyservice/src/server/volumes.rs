//! The host endpoints on volumes (`docs/keyservice-api.md` "Endpoints"): register, wrap,
//! unwrap, and the escrow package (stored by the owner host, fetched by an officer). Each
//! release and change is committed with its audit row before the reply is sent.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::app::{blocking, App, Peer};
use super::problem::{Problem, Reply};
use crate::api::{
    EscrowFetchReply, EscrowStoreReply, EscrowStoreRequest, RegisterReply, RegisterRequest,
    SecretString, UnwrapReply, UnwrapRequest, WrapReply, WrapRequest,
};
use crate::refusal::Refusal;
use crate::store::{self, AuditEntry, Role, StoreError};
use crate::wrap;

/// An `ok` audit row of `actor` doing `action` on volume `uuid`.
fn ok_entry(actor: String, action: &str, uuid: &str, detail: String) -> AuditEntry {
    AuditEntry {
        actor,
        action: action.into(),
        target: uuid.into(),
        outcome: "ok".into(),
        detail,
    }
}

/// `POST /v1/volumes`: the calling host registers (and so owns) a volume.
pub(super) async fn register(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply<RegisterReply> {
    blocking(app, move |app| {
        let host = app.host(&peer, &headers, "register", "")?;
        let actor = format!("host:{host}");
        let req: RegisterRequest = app.parse(&actor, "register", "", &body)?;
        let uuid = app.check_uuid(&peer, &req.uuid, "register")?;
        let (owner, registration) = {
            let s = app.store.lock().unwrap();
            (s.volume_owner(&uuid)?, s.registration())
        };
        let taken = |o: &str| {
            app.refuse(
                &actor,
                "register",
                &uuid,
                Refusal::VolumeTaken,
                format!(
                    "volume {uuid} is registered to host {o}; if it is this host's volume, \
                     ask the key service's administrator to run \
                     `nbdcrypt-keyd volume assign {uuid} --host {host}`"
                ),
            )
        };
        match owner {
            None if registration == store::Registration::Admin => Err(app.refuse(
                &actor,
                "register",
                &uuid,
                Refusal::NotAssigned,
                format!(
                    "volumes are registered by the key service's administrator here; ask for \
                     `nbdcrypt-keyd volume assign {uuid} --host {host}`"
                ),
            )),
            Some(o) if o != host => Err(taken(&o)),
            _ => {
                let entry = ok_entry(actor.clone(), "register", &uuid, String::new());
                let r = app
                    .store
                    .lock()
                    .unwrap()
                    .with_audit(entry, |tx, _| store::register_volume(tx, &uuid, &host));
                match r {
                    Ok(()) => Ok(Json(RegisterReply {
                        uuid: uuid.clone(),
                        owner: host.clone(),
                    })),
                    // Another host registered it between the look-up and the insert.
                    Err(StoreError::Exists { name: o, .. }) => Err(taken(&o)),
                    Err(e) => Err(e.into()),
                }
            }
        }
    })
    .await
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
                Refusal::UnknownKek,
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

/// `POST /v1/volumes/{uuid}/wrap`: seals a keyslot secret under the KEK's current version.
pub(super) async fn wrap_secret(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Reply<WrapReply> {
    blocking(app, move |app| {
        let uuid = app.check_uuid(&peer, &uuid, "wrap")?;
        let host = app.host(&peer, &headers, "wrap", &uuid)?;
        let actor = format!("host:{host}");
        app.owned(&host, &uuid, "wrap")?;
        let req: WrapRequest = app.parse(&actor, "wrap", &uuid, &body)?;
        let secret = Zeroizing::new(B64.decode(req.secret.0.as_bytes()).unwrap_or_default());
        if secret.is_empty() || secret.len() > 64 {
            return Err(app.refuse(
                &actor,
                "wrap",
                &uuid,
                Refusal::BadRequest,
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
        let detail = format!("keyslot {} KEK {} version {version}", req.slot, req.kek);
        let entry = ok_entry(actor, "wrap", &uuid, detail);
        app.store.lock().unwrap().with_audit(entry, |tx, _| {
            store::record_usage(tx, &uuid, req.slot, &req.kek, version)
        })?;
        Ok(Json(WrapReply {
            kek: req.kek,
            version,
            blob: B64.encode(blob),
        }))
    })
    .await
}

/// `POST /v1/volumes/{uuid}/unwrap`: opens a blob; the audit row is committed before the
/// secret leaves.
pub(super) async fn unwrap_secret(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Reply<UnwrapReply> {
    blocking(app, move |app| {
        let uuid = app.check_uuid(&peer, &uuid, "unwrap")?;
        let host = app.host(&peer, &headers, "unwrap", &uuid)?;
        let actor = format!("host:{host}");
        app.owned(&host, &uuid, "unwrap")?;
        let req: UnwrapRequest = app.parse(&actor, "unwrap", &uuid, &body)?;
        let what = format!(
            "keyslot {} KEK {} version {}",
            req.slot, req.kek, req.version
        );
        let refuse = |refusal, detail: String| {
            app.refuse(
                &actor,
                "unwrap",
                &uuid,
                refusal,
                format!("{what}: {detail}"),
            )
        };
        let info = match app.store.lock().unwrap().kek_show(&req.kek) {
            Ok(i) => Some(i),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(info) = info else {
            return Err(refuse(Refusal::UnknownKek, "no such KEK".into()));
        };
        if req.version < info.min_unwrap_version {
            return Err(refuse(
                Refusal::VersionRetired,
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
                Refusal::UnknownKekVersion,
                "no such KEK version".into(),
            ));
        };
        let blob = B64.decode(req.blob.as_bytes()).unwrap_or_default();
        let aad = wrap::keyslot_aad(&uuid, req.slot, &req.kek, req.version);
        let secret = match wrap::open(&material, &aad, &blob) {
            Ok(s) => s,
            Err(_) => {
                return Err(refuse(
                    Refusal::Binding,
                    "the blob does not open for this volume, keyslot and KEK version".into(),
                ))
            }
        };
        let entry = ok_entry(actor.clone(), "unwrap", &uuid, what.clone());
        // The audit row is committed before the secret leaves.
        app.store.lock().unwrap().with_audit(entry, |tx, _| {
            store::record_usage(tx, &uuid, req.slot, &req.kek, req.version)
        })?;
        Ok(Json(UnwrapReply {
            secret: SecretString(Zeroizing::new(B64.encode(&secret[..]))),
            current_version: info.current.into(),
        }))
    })
    .await
}

/// `PUT /v1/volumes/{uuid}/escrow`: the owner host stores (replaces) the escrow package.
pub(super) async fn escrow_store(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> Reply<EscrowStoreReply> {
    blocking(app, move |app| {
        let uuid = app.check_uuid(&peer, &uuid, "escrow-store")?;
        let host = app.host(&peer, &headers, "escrow-store", &uuid)?;
        let actor = format!("host:{host}");
        app.owned(&host, &uuid, "escrow-store")?;
        let req: EscrowStoreRequest = app.parse(&actor, "escrow-store", &uuid, &body)?;
        if !req
            .package
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
        {
            return Err(app.refuse(
                &actor,
                "escrow-store",
                &uuid,
                Refusal::BadRequest,
                "the package must be an armored age file".into(),
            ));
        }
        let detail = format!("{} bytes", req.package.len());
        let entry = ok_entry(actor, "escrow-store", &uuid, detail);
        app.store.lock().unwrap().with_audit(entry, |tx, _| {
            store::store_escrow(tx, &uuid, &host, &req.package)
        })?;
        Ok(Json(EscrowStoreReply { uuid, stored: true }))
    })
    .await
}

/// `GET /v1/volumes/{uuid}/escrow`: an officer fetches the escrow package.
pub(super) async fn escrow_fetch(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(uuid): UrlPath<String>,
) -> Reply<EscrowFetchReply> {
    blocking(app, move |app| {
        let uuid = app.check_uuid(&peer, &uuid, "escrow-fetch")?;
        let who = app.person(&peer, &headers, "escrow-fetch", &uuid, &[Role::Officer])?;
        let actor = format!("token:{who}(officer)");
        let entry = ok_entry(actor.clone(), "escrow-fetch", &uuid, String::new());
        let mut st = app.store.lock().unwrap();
        let pkg = st.escrow_package(&uuid)?;
        match pkg {
            Some(package) => {
                st.with_audit(entry, |_, _| Ok(()))?;
                Ok(Json(EscrowFetchReply { uuid, package }))
            }
            None => {
                drop(st);
                Err(app.refuse(
                    &actor,
                    "escrow-fetch",
                    &uuid,
                    Refusal::NoEscrow,
                    format!("no escrow package for volume {uuid}"),
                ))
            }
        }
    })
    .await
}
