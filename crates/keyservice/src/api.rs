//! The key service's wire types (`docs/keyservice-api.md` "Endpoints"): the JSON body of every
//! request and reply, shared by the server ([`crate::server`]) and the client
//! ([`crate::client`]), and the problem body of a refusal.
//!
//! Field order is the order on the wire. Requests that a client builds from borrowed data are
//! generic over their text (`&str` when sent, `String` when received), with the owned types as
//! defaults, so one struct serves both sides. Secret fields are [`SecretString`] (zeroised on
//! drop, redacted in `Debug`).
//!
//! The request structs keep the short names the server's parser always had (`WrapReq`, ...),
//! because serde quotes the type's name in the `detail` of a 400 `bad-request` for a body of
//! the wrong shape (`expected struct WrapReq with 3 elements`); each has an alias with the
//! longer name (`WrapRequest`, ...) that the client has always used.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A secret text field of a request or reply (base64 of a keyslot secret, a join token):
/// zeroised on drop, never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct SecretString(pub Zeroizing<String>);

impl From<String> for SecretString {
    fn from(s: String) -> SecretString {
        SecretString(Zeroizing::new(s))
    }
}

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(..)")
    }
}

/// Reply of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReply {
    /// Always `ok`.
    pub status: String,
    /// `nbdcrypt-keyd`.
    pub service: String,
    /// The server's package version.
    pub version: String,
}

/// Body of `POST /v1/join` (anyone holding a join token).
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinReq<Text = String> {
    /// The one-time join token (`nbj_...`).
    pub token: SecretString,
    /// The host's P-256 public key: the uncompressed point (65 bytes), standard base64.
    pub public_key: Text,
}

/// [`JoinReq`] by the name the client has always used for it.
pub type JoinRequest<Text = String> = JoinReq<Text>;

/// Reply of `POST /v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// The host name the token was made for.
    pub host: String,
    /// The host's client certificate (PEM), over the public key of the request.
    pub certificate: String,
}

/// Body of `POST /v1/volumes` (a host; it becomes the owner).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterReq<Text = String> {
    /// The volume UUID as in its LUKS2 header (36 characters).
    pub uuid: Text,
}

/// [`RegisterReq`] by the name the client has always used for it.
pub type RegisterRequest<Text = String> = RegisterReq<Text>;

/// Reply of `POST /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// The volume UUID.
    pub uuid: String,
    /// The owning host (the caller).
    pub owner: String,
}

/// Body of `POST /v1/volumes/{uuid}/wrap` (the owner host).
#[derive(Debug, Serialize, Deserialize)]
pub struct WrapReq<Text = String, Secret = SecretString> {
    /// Keyslot number the secret opens.
    pub slot: u32,
    /// KEK name.
    pub kek: Text,
    /// The secret (1 to 64 bytes), standard base64.
    pub secret: Secret,
}

/// [`WrapReq`] by the name the client has always used for it.
pub type WrapRequest<Text = String, Secret = SecretString> = WrapReq<Text, Secret>;

/// Reply of `POST /v1/volumes/{uuid}/wrap`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrapReply {
    /// KEK name (as in the request).
    #[serde(default)]
    pub kek: String,
    /// KEK version that wrapped the secret (the current one).
    pub version: u32,
    /// The wrapped blob (`docs/keyservice-api.md` "Wrapped blobs"), standard base64; not
    /// secret: only the service's KEK opens it.
    pub blob: String,
}

/// Body of `POST /v1/volumes/{uuid}/unwrap` (the owner host). `Version` is `u32` on the
/// server (a larger number is a 400 `bad-request`); a client may send the `u64` it read from
/// the volume's LUKS2 token.
#[derive(Debug, Serialize, Deserialize)]
pub struct UnwrapReq<Text = String, Version = u32> {
    /// Keyslot number.
    pub slot: u32,
    /// KEK name.
    pub kek: Text,
    /// KEK version of the blob.
    pub version: Version,
    /// The wrapped blob, standard base64.
    pub blob: Text,
}

/// [`UnwrapReq`] by the name the client has always used for it.
pub type UnwrapRequest<Text = String, Version = u32> = UnwrapReq<Text, Version>;

/// Reply of `POST /v1/volumes/{uuid}/unwrap`.
#[derive(Debug, Serialize, Deserialize)]
pub struct UnwrapReply {
    /// The secret, standard base64.
    pub secret: SecretString,
    /// The KEK's current version (above the blob's: the caller should rewrap).
    pub current_version: u64,
}

/// Body of `PUT /v1/volumes/{uuid}/escrow` (the owner host).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EscrowReq<Text = String> {
    /// The escrow package: an armored `age` file (`format-spec.md` §9.3).
    pub package: Text,
}

/// [`EscrowReq`] by the name the client has always used for it.
pub type EscrowStoreRequest<Text = String> = EscrowReq<Text>;

/// Reply of `PUT /v1/volumes/{uuid}/escrow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowStoreReply {
    /// The volume UUID.
    pub uuid: String,
    /// Always `true`.
    pub stored: bool,
}

/// Reply of `GET /v1/volumes/{uuid}/escrow` (an officer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowFetchReply {
    /// The volume UUID.
    pub uuid: String,
    /// The armored `age` package as stored.
    pub package: String,
}

/// One recovery officer of `GET /v1/officers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Officer {
    /// The officer's name.
    pub name: String,
    /// Its `age` X25519 recipient (`age1...`).
    pub recipient: String,
}

/// Reply of `GET /v1/officers` (any identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficersReply {
    /// Every officer, by name.
    pub officers: Vec<Officer>,
}

/// A KEK version and how many keyslots hosts last reported using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekVersion {
    /// Version number, from 1.
    pub version: u32,
    /// Keyslots whose last wrap or unwrap used this version.
    pub keyslots: i64,
}

/// Reply of `GET /v1/keks/{name}` (admin, auditor), and what `kek show` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekInfo {
    /// The KEK's name.
    pub name: String,
    /// The version new wraps use.
    pub current: u32,
    /// Versions below this are refused for unwrapping.
    pub min_unwrap_version: u32,
    /// Every version.
    pub versions: Vec<KekVersion>,
}

/// Query of `GET /v1/audit?after=SEQ&limit=N`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Rows with `seq` above this (default 0).
    pub after: Option<i64>,
    /// At most this many rows (default 1000, clamped to 1 ..= 10000).
    pub limit: Option<i64>,
}

/// One stored audit row (`docs/keyservice-api.md` "Audit log"), as `GET /v1/audit` and
/// `audit list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Sequence number, from 1, no gaps.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who: `host:NAME`, `token:NAME(ROLE)`, `join:HOST`, `cli`, or `anonymous`.
    pub actor: String,
    /// What: `unwrap`, `wrap`, `register`, `escrow-store`, `kek-create`, ...
    pub action: String,
    /// On what: a volume UUID, KEK, host or token name; may be empty.
    pub target: String,
    /// `ok`, or `refused STATUS: KIND` ([`crate::refusal::Refusal::audit_outcome`]).
    pub outcome: String,
    /// More facts (keyslot, KEK version, ...); never a secret.
    pub detail: String,
    /// Hex SHA-256 of the previous row.
    pub prev: String,
    /// Hex SHA-256 of this row.
    pub hash: String,
}

/// Reply of `GET /v1/audit` (admin, auditor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditListReply {
    /// The rows, in order.
    pub rows: Vec<AuditRow>,
}

/// Reply of `GET /v1/audit/verify` (admin, auditor), and what `audit verify` checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: i64,
    /// `true` when every row's hash and link are right, the numbers have no gap, every
    /// checkpoint's signature holds, and the log starts where the last checkpoint says.
    pub ok: bool,
    /// The first row that is wrong, if any.
    pub bad_seq: Option<i64>,
    /// Why it is wrong.
    pub problem: Option<String>,
    /// The first row present (1, or the anchor checkpoint's row after a prune).
    #[serde(default)]
    pub first: i64,
    /// Checkpoint rows whose signature was checked.
    #[serde(default)]
    pub checkpoints: i64,
    /// The last row sealed by a checkpoint (the row before the newest checkpoint row).
    #[serde(default)]
    pub sealed_through: Option<i64>,
    /// Rows after the newest checkpoint's own row: hash-chained but not yet under a
    /// signature, so cutting them off is only seen against a checkpoint kept elsewhere.
    #[serde(default)]
    pub unsealed: i64,
}

/// A signed audit checkpoint (`docs/keyservice-api.md` "Audit log"): the row count (as the
/// last row's `seq`) and head hash the store's CA key signed, as `audit checkpoint` prints it
/// for off-host storage and `audit verify --checkpoint FILE` reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The last row it seals: every row up to this one.
    pub seq: i64,
    /// Hex SHA-256 `hash` of row `seq`.
    pub head: String,
    /// The first row of the log when it was signed (1 until a prune).
    pub first: i64,
    /// When it was signed (its own row's `time_ms`), Unix milliseconds.
    pub time_ms: i64,
    /// The checkpoint's own row (`seq + 1`).
    pub row: i64,
    /// Base64 of the ECDSA P-256 SHA-256 signature (ASN.1 DER) by the CA key, verified with
    /// `ca.pem` (message: `store/checkpoint.rs`).
    pub signature: String,
}

/// The body of every refusal: `application/problem+json` (RFC 9457 §3), field order as sent.
/// The client reads only its `type` and `detail`, field by field (`client::refusal_fields`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProblemBody {
    /// `urn:nbdcrypt:keyd:KIND` ([`crate::refusal::Refusal::problem_type`]).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The status's reason phrase (`Forbidden`, ...).
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was refused and why (never a secret).
    pub detail: String,
    /// The audit row that recorded the refusal (`null` when none did).
    pub audit_seq: Option<i64>,
}

impl ProblemBody {
    /// The problem type's last part (`not-owner`, `binding`, ...), empty if there is none.
    pub fn kind(&self) -> &str {
        self.problem_type.rsplit(':').next().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The bytes the server sent before these types existed (built with `json!`), for each
    /// reply: the structs must serialise to exactly the same.
    #[test]
    fn replies_serialise_as_before() {
        let cases: Vec<(String, serde_json::Value)> = vec![
            (
                serde_json::to_string(&RegisterReply {
                    uuid: "u".into(),
                    owner: "h".into(),
                })
                .unwrap(),
                json!({"uuid": "u", "owner": "h"}),
            ),
            (
                serde_json::to_string(&EscrowStoreReply {
                    uuid: "u".into(),
                    stored: true,
                })
                .unwrap(),
                json!({"uuid": "u", "stored": true}),
            ),
            (
                serde_json::to_string(&EscrowFetchReply {
                    uuid: "u".into(),
                    package: "p".into(),
                })
                .unwrap(),
                json!({"uuid": "u", "package": "p"}),
            ),
            (
                serde_json::to_string(&OfficersReply {
                    officers: vec![Officer {
                        name: "olga".into(),
                        recipient: "age1x".into(),
                    }],
                })
                .unwrap(),
                json!({"officers": [{"name": "olga", "recipient": "age1x"}]}),
            ),
            (
                serde_json::to_string(&JoinReply {
                    host: "h".into(),
                    certificate: "PEM".into(),
                })
                .unwrap(),
                json!({"host": "h", "certificate": "PEM"}),
            ),
            (
                serde_json::to_string(&HealthReply {
                    status: "ok".into(),
                    service: "nbdcrypt-keyd".into(),
                    version: "1".into(),
                })
                .unwrap(),
                json!({"status": "ok", "service": "nbdcrypt-keyd", "version": "1"}),
            ),
            (
                serde_json::to_string(&ProblemBody {
                    problem_type: "urn:nbdcrypt:keyd:role".into(),
                    title: "Forbidden".into(),
                    status: 403,
                    detail: "d".into(),
                    audit_seq: None,
                })
                .unwrap(),
                json!({"type": "urn:nbdcrypt:keyd:role", "title": "Forbidden", "status": 403,
                       "detail": "d", "audit_seq": null}),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want.to_string());
        }
    }

    #[test]
    fn borrowed_requests_are_read_as_owned_ones() {
        let secret = SecretString::from("c2VjcmV0".to_string());
        let sent = serde_json::to_vec(&WrapRequest {
            slot: 3,
            kek: "k1",
            secret: &secret,
        })
        .unwrap();
        assert_eq!(sent, br#"{"slot":3,"kek":"k1","secret":"c2VjcmV0"}"#);
        let got: WrapRequest = serde_json::from_slice(&sent).unwrap();
        assert_eq!(
            (got.slot, got.kek.as_str(), got.secret.0.as_str()),
            (3, "k1", "c2VjcmV0")
        );

        let sent = serde_json::to_vec(&UnwrapRequest {
            slot: 1,
            kek: "k",
            version: 7u64,
            blob: "YmxvYg==",
        })
        .unwrap();
        let got: UnwrapRequest = serde_json::from_slice(&sent).unwrap();
        assert_eq!(
            (got.slot, got.version, got.blob.as_str()),
            (1, 7u32, "YmxvYg==")
        );
        // A version beyond u32 is no server request.
        let big = serde_json::to_vec(&UnwrapRequest {
            slot: 1,
            kek: "k",
            version: 1u64 << 32,
            blob: "",
        })
        .unwrap();
        assert!(serde_json::from_slice::<UnwrapRequest>(&big).is_err());
    }

    #[test]
    fn secrets_are_redacted_and_problems_read_leniently() {
        let s = SecretString::from("top-secret".to_string());
        assert_eq!(format!("{s:?}"), "SecretString(..)");
        let p: ProblemBody =
            serde_json::from_str(r#"{"type":"urn:nbdcrypt:keyd:binding"}"#).unwrap();
        assert_eq!((p.kind(), p.detail.as_str(), p.status), ("binding", "", 0));
        assert_eq!(ProblemBody::default().kind(), "");
    }
}
