//! The route table of the API (`docs/keyservice-api.md` "Endpoints"): which handler serves
//! which method and path, the health check, and the reply for any other path.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};

use super::app::App;
use super::problem::Problem;
use super::{join, people, volumes};
use crate::api::HealthReply;
use crate::refusal::Refusal;

/// `GET /v1/health`: anyone.
async fn health() -> Json<HealthReply> {
    Json(HealthReply {
        status: "ok".into(),
        service: "nbdcrypt-keyd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Any path without an endpoint: 404 `no-such-endpoint` (not audited).
async fn not_found() -> Problem {
    Problem::new(
        Refusal::NoSuchEndpoint,
        "no such endpoint (see docs/keyservice-api.md)".into(),
        None,
    )
}

/// The API routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/join", post(join::join))
        .route("/v1/volumes", post(volumes::register))
        .route("/v1/volumes/{uuid}/wrap", post(volumes::wrap_secret))
        .route("/v1/volumes/{uuid}/unwrap", post(volumes::unwrap_secret))
        .route(
            "/v1/volumes/{uuid}/escrow",
            get(volumes::escrow_fetch).put(volumes::escrow_store),
        )
        .route("/v1/officers", get(people::officers))
        .route("/v1/keks/{name}", get(people::kek_show))
        .route("/v1/audit", get(people::audit_list))
        .route("/v1/audit/verify", get(people::audit_verify))
        .fallback(not_found)
        .with_state(app)
}
