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
//!
//! Files: [`listen`] (TLS configuration and accept loop), [`conn_table`] (who gets a
//! connection slot at the cap), `connection` (one connection's task and timeouts),
//! [`limits`] (the connection bounds and the descriptor limit), [`routes`] (the route table),
//! `app` (shared state, caller identification and the audited refusal), `audit` (aggregated
//! refusals, the checkpoint tick, shutdown), `aggregate` (the pure aggregation state), `problem` (the
//! refusal reply), and the handlers by area: `volumes` (host endpoints), `people` (officers,
//! KEKs, audit), `join`. Request and reply bodies are [`crate::api`]; refusals
//! [`crate::refusal::Refusal`].

mod aggregate;
mod app;
mod audit;
pub mod conn_table;
mod connection;
mod join;
pub mod limits;
pub mod listen;
mod people;
mod problem;
pub mod routes;
mod volumes;

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

pub(crate) use app::is_volume_uuid;
pub use app::{App, Peer};
pub use limits::ServeLimits;
pub use listen::{serve, tls_config, ServeError};
pub use problem::Problem;
pub use routes::router;
