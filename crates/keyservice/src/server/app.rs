//! The handlers' shared state ([`App`]: the store and the root key) and the checks every
//! handler starts with: who is calling (certificate or bearer token), whether it may, whether
//! it owns the volume, and whether the body and UUID parse. Each refusal is written to the
//! audit log here ([`App::refuse`]) before its reply is built.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap};
use serde::Deserialize;

use super::audit::AuditState;
use super::problem::Problem;
use crate::refusal::Refusal;
use crate::store::{Role, RootKey, Store};

/// Shared state of the handlers.
pub struct App {
    pub(super) store: Mutex<Store>,
    pub(super) root: RootKey,
    pub(super) audit: AuditState,
}

/// Who is at the other end of a connection, as the accept loop saw it.
#[derive(Clone)]
pub struct Peer {
    /// The client certificate's fingerprint (hex SHA-256), if one was presented.
    pub(super) fingerprint: Option<String>,
    /// The peer's IP address (the source of unauthenticated refusals, see `audit.rs`).
    pub(super) ip: Option<IpAddr>,
}

impl Peer {
    /// A peer with certificate fingerprint `fingerprint` (if any) connecting from `ip`.
    pub fn new(fingerprint: Option<String>, ip: Option<IpAddr>) -> Peer {
        Peer { fingerprint, ip }
    }
}

/// Who is calling.
pub(super) enum Caller {
    /// A host, by name.
    Host(String),
    /// A person: token name and role.
    Person(String, Role),
}

impl Caller {
    /// The audit actor: `host:NAME` or `token:NAME(ROLE)`.
    pub(super) fn actor(&self) -> String {
        match self {
            Caller::Host(n) => format!("host:{n}"),
            Caller::Person(n, r) => format!("token:{n}({})", r.as_str()),
        }
    }
}

/// The bearer token of `Authorization: Bearer T`, trimmed.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `uuid` is a volume UUID as LUKS2 headers write it: 36 characters, hex digits with
/// `-` at offsets 8, 13, 18 and 23.
pub(crate) fn is_volume_uuid(uuid: &str) -> bool {
    uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

impl App {
    /// State over an open store and its unlocked root key.
    pub fn new(store: Store, root: RootKey) -> App {
        App {
            audit: AuditState::new(&store),
            store: Mutex::new(store),
            root,
        }
    }

    /// Writes the refusal's audit row (if the refusal is audited), one row, committed, and
    /// returns the problem to send (500 if the audit write itself fails). For callers that
    /// proved an identity; unauthenticated ones go through [`App::refuse_from`].
    pub(super) fn refuse(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        refusal: Refusal,
        detail: String,
    ) -> Problem {
        self.refuse_from(None, actor, action, target, refusal, detail)
    }

    /// Identifies the caller, or refuses (audited).
    pub(super) fn identify(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        action: &str,
        target: &str,
    ) -> Result<Caller, Problem> {
        if let Some(fpr) = &peer.fingerprint {
            let found = self.store.lock().unwrap().host_by_fingerprint(fpr)?;
            return match found {
                Some((name, false)) => Ok(Caller::Host(name)),
                Some((name, true)) => Err(self.refuse(
                    &format!("host:{name}"),
                    action,
                    target,
                    Refusal::HostRevoked,
                    format!("host {name} is revoked"),
                )),
                None => Err(self.refuse_from(
                    Some(peer),
                    "anonymous",
                    action,
                    target,
                    Refusal::UnknownHost,
                    format!("no host has the client certificate {fpr}"),
                )),
            };
        }
        match bearer(headers) {
            Some(t) => {
                let found = self.store.lock().unwrap().token_lookup(t)?;
                match found {
                    Some((name, role)) => Ok(Caller::Person(name, role)),
                    None => Err(self.refuse_from(
                        Some(peer),
                        "anonymous",
                        action,
                        target,
                        Refusal::BadToken,
                        "unknown or revoked bearer token".into(),
                    )),
                }
            }
            None => Err(self.refuse_from(
                Some(peer),
                "anonymous",
                action,
                target,
                Refusal::NoCredentials,
                "no client certificate and no bearer token".into(),
            )),
        }
    }

    /// Identifies a host, refusing people (audited).
    pub(super) fn host(
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
                Refusal::HostsOnly,
                format!("{action} is for hosts (client certificate), not bearer tokens"),
            )),
        }
    }

    /// Identifies a person of one of `roles`, refusing others (audited).
    pub(super) fn person(
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
                Refusal::Role,
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
    pub(super) fn owned(&self, host: &str, uuid: &str, action: &str) -> Result<(), Problem> {
        let actor = format!("host:{host}");
        let owner = self.store.lock().unwrap().volume_owner(uuid)?;
        match owner {
            Some(o) if o == host => Ok(()),
            Some(o) => Err(self.refuse(
                &actor,
                action,
                uuid,
                Refusal::NotOwner,
                format!("volume {uuid} belongs to host {o}"),
            )),
            None => Err(self.refuse(
                &actor,
                action,
                uuid,
                Refusal::UnknownVolume,
                format!("volume {uuid} is not registered"),
            )),
        }
    }

    /// The JSON request body as `T`, or a 400 `bad-request` (audited, one row).
    pub(super) fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        body: &[u8],
    ) -> Result<T, Problem> {
        self.parse_from(None, actor, action, target, body)
    }

    /// [`App::parse`], the refusal aggregated by `peer`'s source when the actor is
    /// unauthenticated ([`App::refuse_from`]).
    pub(super) fn parse_from<T: for<'de> Deserialize<'de>>(
        &self,
        peer: Option<&Peer>,
        actor: &str,
        action: &str,
        target: &str,
        body: &[u8],
    ) -> Result<T, Problem> {
        serde_json::from_slice(body).map_err(|e| {
            self.refuse_from(
                peer,
                actor,
                action,
                target,
                Refusal::BadRequest,
                format!("request body: {e}"),
            )
        })
    }

    /// The volume UUID `uuid` in its one spelling, lower case (as LUKS2 headers write it), so
    /// that one volume is never registered, wrapped for or escrowed under two spellings.
    /// Refuses (400 `bad-request`, audited as `anonymous`, aggregated by `peer`'s source) a
    /// `uuid` that is no volume UUID.
    pub(super) fn check_uuid(
        &self,
        peer: &Peer,
        uuid: &str,
        action: &str,
    ) -> Result<String, Problem> {
        if is_volume_uuid(uuid) {
            Ok(uuid.to_ascii_lowercase())
        } else {
            Err(self.refuse_from(
                Some(peer),
                "anonymous",
                action,
                "",
                Refusal::BadRequest,
                format!("{uuid:?} is not a volume UUID"),
            ))
        }
    }
}

/// Runs blocking store work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    app: Arc<App>,
    f: impl FnOnce(&App) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .unwrap_or_else(|_| Err(Problem::internal("worker failed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_uuids() {
        let cases = [
            ("0f2b6c4e-1a2b-4c3d-8e9f-00112233aabb", true),
            ("0F2B6C4E-1A2B-4C3D-8E9F-00112233AABB", true),
            ("0f2b6c4e-1a2b-4c3d-8e9f-00112233aab", false),
            ("0f2b6c4e-1a2b-4c3d-8e9f-00112233aabbc", false),
            ("0f2b6c4e11a2b-4c3d-8e9f-00112233aabb", false),
            ("0f2b6c4e-1a2b-4c3d-8e9f-00112233aabg", false),
            ("../../../../etc/passwd-aaaaaaaaaaaaa", false),
            ("", false),
        ];
        for (u, ok) in cases {
            assert_eq!(is_volume_uuid(u), ok, "{u:?}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer  nbk_x ".parse().unwrap());
        assert_eq!(bearer(&h), Some("nbk_x"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn actors() {
        assert_eq!(Caller::Host("a".into()).actor(), "host:a");
        assert_eq!(
            Caller::Person("olga".into(), Role::Officer).actor(),
            "token:olga(officer)"
        );
    }
}
