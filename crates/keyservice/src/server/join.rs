//! `POST /v1/join` (`docs/keyservice-api.md` "Joining"): a host without a certificate redeems
//! a one-time join token with its own P-256 public key; the decision is the store's
//! ([`crate::store::Store::join_redeem`]), every outcome an audit row.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::app::{blocking, App, Peer};
use super::problem::Reply;
use crate::api::{JoinReply, JoinRequest};
use crate::store::JoinOutcome;

/// `POST /v1/join`: the certificate for the token's host, or the audited refusal.
pub(super) async fn join(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Reply<JoinReply> {
    blocking(app, move |app| {
        let req: JoinRequest = app.parse_from(Some(&peer), "anonymous", "join", "", &body)?;
        let point = B64.decode(req.public_key.as_bytes()).unwrap_or_default();
        let outcome = app
            .store
            .lock()
            .unwrap()
            .join_redeem(&app.root, &req.token.0, &point)?;
        match outcome {
            JoinOutcome::Issued { host, cert_pem } => Ok(Json(JoinReply {
                host,
                certificate: cert_pem,
            })),
            JoinOutcome::Refused {
                actor,
                refusal,
                detail,
            } => {
                let target = actor.strip_prefix("join:").unwrap_or("").to_string();
                Err(app.refuse_from(Some(&peer), &actor, "join", &target, refusal, detail))
            }
        }
    })
    .await
}
