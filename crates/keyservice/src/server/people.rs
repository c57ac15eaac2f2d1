//! The endpoints for people and any identity (`docs/keyservice-api.md` "Endpoints"): the
//! officer list, KEK information, and the audit log and its verification.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};

use super::app::{blocking, App, Peer};
use super::problem::Reply;
use crate::api::{AuditListReply, AuditQuery, KekInfo, Officer, OfficersReply, VerifyReport};
use crate::refusal::Refusal;
use crate::store::{Role, StoreError};

/// `GET /v1/officers`: any identity lists the recovery officers.
pub(super) async fn officers(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Reply<OfficersReply> {
    blocking(app, move |app| {
        app.identify(&peer, &headers, "officers", "")?;
        let list = app.store.lock().unwrap().officers()?;
        let officers = list
            .into_iter()
            .map(|(name, recipient)| Officer { name, recipient })
            .collect();
        Ok(Json(OfficersReply { officers }))
    })
    .await
}

/// `GET /v1/keks/{name}`: an admin or auditor reads a KEK (as `kek show`).
pub(super) async fn kek_show(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Reply<KekInfo> {
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
                Refusal::UnknownKek,
                format!("no KEK named {name:?}"),
            )),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// `GET /v1/audit?after=SEQ&limit=N`: an admin or auditor reads audit rows.
pub(super) async fn audit_list(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Reply<AuditListReply> {
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
        Ok(Json(AuditListReply { rows }))
    })
    .await
}

/// `GET /v1/audit/verify`: an admin or auditor checks the hash chain.
pub(super) async fn audit_verify(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Reply<VerifyReport> {
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
