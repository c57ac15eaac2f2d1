//! Every way the key service refuses a request (`docs/keyservice-api.md` "Endpoints", the table
//! of refusals): one [`Refusal`] per row, and the one match ([`Refusal::spec`]) that gives each
//! its HTTP status, its problem type (`urn:nbdcrypt:keyd:KIND`) and whether it is written to the
//! audit log (outcome `refused STATUS: KIND`).
//!
//! Pure: no I/O, no HTTP types; the server turns a refusal into a reply
//! (`server::problem`), the store reports join refusals as one ([`crate::store::JoinOutcome`]).

/// Prefix of every problem type the service sends (`type` of the `application/problem+json`
/// body, RFC 9457 §3.1.1).
pub const PROBLEM_TYPE_PREFIX: &str = "urn:nbdcrypt:keyd:";

/// Why the service refuses a request. The `detail` text of a reply is chosen by the call site;
/// status, problem type and audit outcome come from [`Refusal::spec`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 400 `bad-request`: a malformed UUID, body, secret, package or public key.
    BadRequest,
    /// 401 `no-credentials`: neither a client certificate nor a bearer token.
    NoCredentials,
    /// 401 `bad-token`: an unknown or revoked bearer token.
    BadToken,
    /// 403 `unknown-host`: a CA-signed client certificate that no host has.
    UnknownHost,
    /// 403 `host-revoked`: the host is revoked.
    HostRevoked,
    /// 403 `hosts-only`: a person (bearer token) calls a host endpoint.
    HostsOnly,
    /// 403 `role`: a host or person without the role the endpoint needs.
    Role,
    /// 403 `not-owner`: the volume belongs to another host.
    NotOwner,
    /// 409 `not-owner`: `POST /v1/volumes` for a volume another host registered.
    VolumeTaken,
    /// 403 `not-assigned`: `POST /v1/volumes` for a volume the administrator has not assigned
    /// to this host, under `serve --registration admin`.
    NotAssigned,
    /// 404 `unknown-volume`: the volume is not registered.
    UnknownVolume,
    /// 404 `unknown-kek`: no KEK of that name.
    UnknownKek,
    /// 404 `unknown-kek-version`: the KEK has no such version.
    UnknownKekVersion,
    /// 403 `version-retired`: the version is below the KEK's minimum unwrap version.
    VersionRetired,
    /// 422 `binding`: the blob does not open for this volume, keyslot, KEK and version.
    Binding,
    /// 404 `no-escrow`: no escrow package for the volume.
    NoEscrow,
    /// 401 `bad-join-token`: `POST /v1/join` with an unknown token.
    BadJoinToken,
    /// 403 `join-token-used`: the join token was redeemed before.
    JoinTokenUsed,
    /// 403 `join-token-expired`: the join token is past its TTL.
    JoinTokenExpired,
    /// 409 `host-exists`: the join token's host exists already.
    HostExists,
    /// 500 `internal`: the store failed (or the audit write did, so nothing is released).
    /// Not audited.
    Internal,
    /// 404 `no-such-endpoint`: no route for the path. Not audited.
    NoSuchEndpoint,
}

/// What a refusal means on the wire and in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalSpec {
    /// HTTP status of the reply.
    pub status: u16,
    /// The problem type's last part (`KIND` of `urn:nbdcrypt:keyd:KIND`).
    pub kind: &'static str,
    /// Whether an audit row records the refusal (its `audit_seq` is in the reply).
    pub audited: bool,
}

impl Refusal {
    /// Every refusal, for tests and documentation checks.
    pub const ALL: [Refusal; 22] = [
        Refusal::BadRequest,
        Refusal::NoCredentials,
        Refusal::BadToken,
        Refusal::UnknownHost,
        Refusal::HostRevoked,
        Refusal::HostsOnly,
        Refusal::Role,
        Refusal::NotOwner,
        Refusal::VolumeTaken,
        Refusal::NotAssigned,
        Refusal::UnknownVolume,
        Refusal::UnknownKek,
        Refusal::UnknownKekVersion,
        Refusal::VersionRetired,
        Refusal::Binding,
        Refusal::NoEscrow,
        Refusal::BadJoinToken,
        Refusal::JoinTokenUsed,
        Refusal::JoinTokenExpired,
        Refusal::HostExists,
        Refusal::Internal,
        Refusal::NoSuchEndpoint,
    ];

    /// Status, problem kind and audit flag: the one place they are chosen.
    pub const fn spec(self) -> RefusalSpec {
        use Refusal::*;
        let (status, kind, audited) = match self {
            BadRequest => (400, "bad-request", true),
            NoCredentials => (401, "no-credentials", true),
            BadToken => (401, "bad-token", true),
            UnknownHost => (403, "unknown-host", true),
            HostRevoked => (403, "host-revoked", true),
            HostsOnly => (403, "hosts-only", true),
            Role => (403, "role", true),
            NotOwner => (403, "not-owner", true),
            VolumeTaken => (409, "not-owner", true),
            NotAssigned => (403, "not-assigned", true),
            UnknownVolume => (404, "unknown-volume", true),
            UnknownKek => (404, "unknown-kek", true),
            UnknownKekVersion => (404, "unknown-kek-version", true),
            VersionRetired => (403, "version-retired", true),
            Binding => (422, "binding", true),
            NoEscrow => (404, "no-escrow", true),
            BadJoinToken => (401, "bad-join-token", true),
            JoinTokenUsed => (403, "join-token-used", true),
            JoinTokenExpired => (403, "join-token-expired", true),
            HostExists => (409, "host-exists", true),
            Internal => (500, "internal", false),
            NoSuchEndpoint => (404, "no-such-endpoint", false),
        };
        RefusalSpec {
            status,
            kind,
            audited,
        }
    }

    /// HTTP status of the reply.
    pub const fn status(self) -> u16 {
        self.spec().status
    }

    /// The problem type's last part (`not-owner`, `binding`, ...).
    pub const fn kind(self) -> &'static str {
        self.spec().kind
    }

    /// The problem type: `urn:nbdcrypt:keyd:KIND`.
    pub fn problem_type(self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.kind())
    }

    /// The audit row's outcome, `refused STATUS: KIND`; `None` for a refusal that is not
    /// audited ([`Refusal::Internal`], [`Refusal::NoSuchEndpoint`]).
    pub fn audit_outcome(self) -> Option<String> {
        let s = self.spec();
        s.audited
            .then(|| format!("refused {}: {}", s.status, s.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const API_DOC: &str = include_str!("../../../docs/keyservice-api.md");

    /// `(status, kind)` of every row of the doc's refusal table (a row may name several kinds).
    fn doc_rows() -> BTreeSet<(u16, String)> {
        let start = API_DOC
            .find("\nRefusals (")
            .expect("docs/keyservice-api.md has a table of refusals");
        let mut rows = BTreeSet::new();
        let mut in_table = false;
        for line in API_DOC[start + 1..].lines().skip(1) {
            let line = line.trim();
            if !line.starts_with('|') {
                if in_table {
                    break;
                }
                continue;
            }
            in_table = true;
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let Ok(status) = cells[0].parse::<u16>() else {
                continue; // the header and the separator row
            };
            for kind in cells[1].split(',') {
                let kind = kind.trim().trim_matches('`');
                assert!(!kind.is_empty(), "empty kind in {line:?}");
                rows.insert((status, kind.to_string()));
            }
        }
        assert!(!rows.is_empty(), "the refusal table has no rows");
        rows
    }

    #[test]
    fn every_refusal_is_in_the_api_doc_and_every_row_is_a_refusal() {
        let doc = doc_rows();
        let ours: BTreeSet<(u16, String)> = Refusal::ALL
            .iter()
            .map(|r| (r.status(), r.kind().to_string()))
            .collect();
        for r in Refusal::ALL {
            assert!(
                doc.contains(&(r.status(), r.kind().to_string())),
                "{r:?} ({} {}) is missing from the refusal table of docs/keyservice-api.md",
                r.status(),
                r.kind()
            );
        }
        for row in &doc {
            assert!(ours.contains(row), "doc row {row:?} is no Refusal");
        }
        assert_eq!(
            ours.len(),
            Refusal::ALL.len(),
            "two refusals share status and kind"
        );
    }

    #[test]
    fn problem_types_and_audit_outcomes() {
        let cases = [
            (
                Refusal::BadRequest,
                "urn:nbdcrypt:keyd:bad-request",
                Some("refused 400: bad-request"),
            ),
            (
                Refusal::VolumeTaken,
                "urn:nbdcrypt:keyd:not-owner",
                Some("refused 409: not-owner"),
            ),
            (
                Refusal::NotOwner,
                "urn:nbdcrypt:keyd:not-owner",
                Some("refused 403: not-owner"),
            ),
            (
                Refusal::Binding,
                "urn:nbdcrypt:keyd:binding",
                Some("refused 422: binding"),
            ),
            (
                Refusal::BadJoinToken,
                "urn:nbdcrypt:keyd:bad-join-token",
                Some("refused 401: bad-join-token"),
            ),
            (Refusal::Internal, "urn:nbdcrypt:keyd:internal", None),
            (
                Refusal::NoSuchEndpoint,
                "urn:nbdcrypt:keyd:no-such-endpoint",
                None,
            ),
        ];
        for (r, ty, outcome) in cases {
            assert_eq!(r.problem_type(), ty, "{r:?}");
            assert_eq!(r.audit_outcome().as_deref(), outcome, "{r:?}");
        }
    }

    #[test]
    fn all_lists_every_variant_once() {
        let set: BTreeSet<String> = Refusal::ALL.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(set.len(), Refusal::ALL.len());
        // A new variant must be added to ALL: this match fails to compile otherwise.
        for r in Refusal::ALL {
            match r {
                Refusal::BadRequest
                | Refusal::NoCredentials
                | Refusal::BadToken
                | Refusal::UnknownHost
                | Refusal::HostRevoked
                | Refusal::HostsOnly
                | Refusal::Role
                | Refusal::NotOwner
                | Refusal::VolumeTaken
                | Refusal::NotAssigned
                | Refusal::UnknownVolume
                | Refusal::UnknownKek
                | Refusal::UnknownKekVersion
                | Refusal::VersionRetired
                | Refusal::Binding
                | Refusal::NoEscrow
                | Refusal::BadJoinToken
                | Refusal::JoinTokenUsed
                | Refusal::JoinTokenExpired
                | Refusal::HostExists
                | Refusal::Internal
                | Refusal::NoSuchEndpoint => {}
            }
        }
    }
}
