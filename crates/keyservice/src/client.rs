//! Client of the key service API (`docs/keyservice-api.md`) for the volume CLI: HTTPS with the
//! host's client certificate (rustls, ring provider), HTTP/1.1 through hyper, one request per
//! connection, and a whole-request timeout per endpoint so a dead server costs seconds.
//!
//! Blocking: each call runs on a private current-thread tokio runtime. The request and reply
//! bodies are the shared wire types of [`crate::api`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Buf;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::api::{
    AuditListReply, AuditQuery, EscrowFetchReply, EscrowStoreReply, EscrowStoreRequest,
    HealthReply, JoinReply, JoinRequest, KekInfo, OfficersReply, RegisterReply, RegisterRequest,
    VerifyReport,
};
/// The wire types the volume CLI sends and reads, at their former place.
pub use crate::api::{SecretString, UnwrapReply, UnwrapRequest, WrapReply, WrapRequest};

/// The host identity files: certificate and key from `nbdcrypt-keyd host add`, and the
/// service's CA certificate (`ca.pem` of its data directory).
#[derive(Debug, Clone)]
pub struct Identity {
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The service's CA certificate (PEM).
    pub ca: PathBuf,
}

/// Why a call failed; every variant names the endpoint URL (or the file).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An identity file is missing or unusable.
    #[error("key service identity {}: {detail}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The URL is not `https://HOST[:PORT]`.
    #[error("key service URL {0:?} is not https://HOST[:PORT]")]
    Url(String),
    /// No complete answer within the timeout.
    #[error("{url}: no answer within {secs} s")]
    Timeout {
        /// The endpoint.
        url: String,
        /// The timeout, seconds.
        secs: f64,
    },
    /// TCP, TLS or HTTP failed.
    #[error("{url}: {detail}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The service answered with an error status (its problem `detail`).
    #[error("{url}: refused with {status} {kind}: {detail}")]
    Refused {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The problem type's last part (`not-owner`, `binding`, ...).
        kind: String,
        /// The problem detail.
        detail: String,
    },
}

/// A configured client.
pub struct Client {
    config: Arc<ClientConfig>,
    timeout: Duration,
    /// A person's bearer token (`Authorization: Bearer`), for [`Client::with_token`].
    bearer: Option<String>,
}

fn id_err(path: &Path, detail: impl ToString) -> ClientError {
    ClientError::Identity {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// `https://HOST[:PORT][/]` → (host without brackets, port, authority).
fn parse_url(url: &str) -> Result<(String, u16, String), ClientError> {
    let bad = || ClientError::Url(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 443,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), 443),
        }
    };
    Ok((host, port, authority.to_string()))
}

/// A TLS client configuration (ring provider, safe protocol versions) trusting only `ca`.
fn config_builder(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| id_err(ca, e))? {
        roots
            .add(c.map_err(|e| id_err(ca, e))?)
            .map_err(|e| id_err(ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| id_err(ca, e))?
        .with_root_certificates(roots))
}

impl Client {
    /// A client presenting `id`'s certificate, trusting only `id.ca`, with `timeout` for each
    /// whole request (connect, handshake, reply).
    ///
    /// Errors: [`ClientError::Identity`].
    pub fn new(id: &Identity, timeout: Duration) -> Result<Client, ClientError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&id.cert)
            .map_err(|e| id_err(&id.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| id_err(&id.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&id.key).map_err(|e| id_err(&id.key, e))?;
        let config = config_builder(&id.ca)?
            .with_client_auth_cert(certs, key)
            .map_err(|e| id_err(&id.cert, e))?;
        Ok(Client {
            config: Arc::new(config),
            timeout,
            bearer: None,
        })
    }

    /// A client of a person (officer, admin, auditor): no client certificate, `token` sent as
    /// `Authorization: Bearer` on every request, trusting only the CA certificate `ca`, with
    /// `timeout` for each whole request.
    ///
    /// Errors: [`ClientError::Identity`] naming `ca`.
    pub fn with_token(ca: &Path, token: &str, timeout: Duration) -> Result<Client, ClientError> {
        let config = config_builder(ca)?.with_no_client_auth();
        Ok(Client {
            config: Arc::new(config),
            timeout,
            bearer: Some(token.trim().to_string()),
        })
    }

    /// A client without a certificate, trusting only `ca` (PEM): for `POST /v1/join`, which a
    /// host calls before it has one.
    ///
    /// Errors: [`ClientError::Identity`] naming `ca`.
    pub fn anonymous(ca: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let config = config_builder(ca)?.with_no_client_auth();
        Ok(Client {
            config: Arc::new(config),
            timeout,
            bearer: None,
        })
    }

    /// `method` `url` + `path` with JSON `body`; the JSON reply of a 2xx status.
    ///
    /// Errors: [`ClientError::Timeout`], [`ClientError::Transport`], [`ClientError::Refused`]
    /// (with the service's problem details), [`ClientError::Url`].
    pub fn call(
        &self,
        url: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = self.call_bytes(url, method, path, body)?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// As [`Client::call`] for requests and replies that carry a secret: `body` is serialised
    /// into a buffer that is zeroised after sending, and the 2xx reply is read into a zeroised
    /// buffer and parsed as `T` (whose secret fields should be [`SecretString`]).
    ///
    /// Errors: as [`Client::call`]; [`ClientError::Transport`] when the reply is not a `T`.
    pub fn call_secret<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        method: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        self.call_typed(url, method, path, Some(body))
    }

    /// The body bytes of a 2xx reply, in a zeroised buffer; the request body is serialised
    /// into one too.
    fn call_bytes(
        &self,
        url: &str,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        // Room for any request we send, so serialising never reallocates (which would leave a
        // copy of a secret in freed memory).
        let mut data = Zeroizing::new(Vec::with_capacity(64 * 1024));
        if let Some(b) = body {
            serde_json::to_writer(&mut *data, b).map_err(|e| ClientError::Transport {
                url: url.into(),
                detail: format!("request body: {e}"),
            })?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Transport {
                url: url.into(),
                detail: format!("runtime: {e}"),
            })?;
        let fut = self.request(url, method, path, data);
        let (status, bytes) = rt
            .block_on(async { tokio::time::timeout(self.timeout, fut).await })
            .map_err(|_| ClientError::Timeout {
                url: url.into(),
                secs: self.timeout.as_secs_f64(),
            })??;
        if !(200..300).contains(&status) {
            let (kind, detail) = refusal_fields(&bytes);
            return Err(ClientError::Refused {
                url: url.into(),
                status,
                kind,
                detail,
            });
        }
        Ok(bytes)
    }

    async fn request(
        &self,
        url: &str,
        method: &str,
        path: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), ClientError> {
        let (host, port, authority) = parse_url(url)?;
        let t = |what: &str, e: &dyn std::fmt::Display| ClientError::Transport {
            url: url.into(),
            detail: format!("{what}: {e}"),
        };
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| t("connect", &e))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| t("server name", &e))?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| t("TLS", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| t("HTTP", &e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(SecretBuf { data: body, pos: 0 }))
            .map_err(|e| t("request", &e))?;
        let resp = sender.send_request(req).await.map_err(|e| t("HTTP", &e))?;
        let status = resp.status().as_u16();
        let expect = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut out = Zeroizing::new(Vec::with_capacity(expect.clamp(4096, MAX_REPLY)));
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| t("HTTP body", &e))?;
            if let Ok(chunk) = frame.into_data() {
                if out.len() + chunk.len() > MAX_REPLY {
                    return Err(t("HTTP body", &format!("reply over {MAX_REPLY} bytes")));
                }
                out.extend_from_slice(&chunk);
            }
        }
        Ok((status, out))
    }
}

/// One method per endpoint (`docs/keyservice-api.md` "Endpoints"), with the shared wire types
/// of [`crate::api`]: the path is built here, the reply parsed as its type.
///
/// Errors (every method): as [`Client::call_secret`]; [`ClientError::Refused`] carries the
/// refusal's status and kind ([`crate::refusal::Refusal`]).
impl Client {
    /// `GET /v1/health`.
    pub fn health(&self, url: &str) -> Result<HealthReply, ClientError> {
        self.call_typed(url, "GET", "/v1/health", None::<&()>)
    }

    /// `POST /v1/join` with a join token and the host's public key (no client certificate:
    /// use [`Client::anonymous`]).
    pub fn join(&self, url: &str, req: &JoinRequest<&str>) -> Result<JoinReply, ClientError> {
        self.call_typed(url, "POST", "/v1/join", Some(req))
    }

    /// `POST /v1/volumes`: registers volume `uuid` to this host.
    pub fn register(&self, url: &str, uuid: &str) -> Result<RegisterReply, ClientError> {
        let req = RegisterRequest { uuid };
        self.call_typed(url, "POST", "/v1/volumes", Some(&req))
    }

    /// `POST /v1/volumes/{uuid}/wrap`.
    pub fn wrap(
        &self,
        url: &str,
        uuid: &str,
        req: &WrapRequest<&str, &SecretString>,
    ) -> Result<WrapReply, ClientError> {
        self.call_typed(url, "POST", &format!("/v1/volumes/{uuid}/wrap"), Some(req))
    }

    /// `POST /v1/volumes/{uuid}/unwrap`; the reply's secret is zeroised on drop.
    pub fn unwrap(
        &self,
        url: &str,
        uuid: &str,
        req: &UnwrapRequest<&str, u64>,
    ) -> Result<UnwrapReply, ClientError> {
        self.call_typed(
            url,
            "POST",
            &format!("/v1/volumes/{uuid}/unwrap"),
            Some(req),
        )
    }

    /// `PUT /v1/volumes/{uuid}/escrow` with an armored `age` package.
    pub fn escrow_store(
        &self,
        url: &str,
        uuid: &str,
        package: &str,
    ) -> Result<EscrowStoreReply, ClientError> {
        let req = EscrowStoreRequest { package };
        self.call_typed(
            url,
            "PUT",
            &format!("/v1/volumes/{uuid}/escrow"),
            Some(&req),
        )
    }

    /// `GET /v1/volumes/{uuid}/escrow` (an officer's token).
    pub fn escrow_fetch(&self, url: &str, uuid: &str) -> Result<EscrowFetchReply, ClientError> {
        self.call_typed(
            url,
            "GET",
            &format!("/v1/volumes/{uuid}/escrow"),
            None::<&()>,
        )
    }

    /// `GET /v1/officers`.
    pub fn officers(&self, url: &str) -> Result<OfficersReply, ClientError> {
        self.call_typed(url, "GET", "/v1/officers", None::<&()>)
    }

    /// `GET /v1/keks/{name}` (an admin's or auditor's token).
    pub fn kek(&self, url: &str, name: &str) -> Result<KekInfo, ClientError> {
        self.call_typed(url, "GET", &format!("/v1/keks/{name}"), None::<&()>)
    }

    /// `GET /v1/audit` (an admin's or auditor's token).
    pub fn audit_list(&self, url: &str, q: &AuditQuery) -> Result<AuditListReply, ClientError> {
        let path = audit_path(q);
        self.call_typed(url, "GET", &path, None::<&()>)
    }

    /// `GET /v1/audit/verify` (an admin's or auditor's token).
    pub fn audit_verify(&self, url: &str) -> Result<VerifyReport, ClientError> {
        self.call_typed(url, "GET", "/v1/audit/verify", None::<&()>)
    }

    /// A call whose 2xx reply is parsed as `T`.
    fn call_typed<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = self.call_bytes(url, method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport {
            url: url.into(),
            detail: format!("reply of {path}: {e}"),
        })
    }
}

/// `/v1/audit` with the query's `after` and `limit` when set.
fn audit_path(q: &AuditQuery) -> String {
    let params: Vec<String> = [("after", q.after), ("limit", q.limit)]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    if params.is_empty() {
        "/v1/audit".into()
    } else {
        format!("/v1/audit?{}", params.join("&"))
    }
}

/// The largest reply read, bytes (escrow packages are the largest, a few KiB).
const MAX_REPLY: usize = 16 << 20;

/// A request body that is zeroised when hyper drops it.
struct SecretBuf {
    data: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Buf for SecretBuf {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    fn chunk(&self) -> &[u8] {
        &self.data[self.pos..]
    }
    fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.data.len());
    }
}

/// The kind (last part of `type`) and the `detail` of an error reply's body, each empty when
/// absent or not a string. Read field by field rather than as a whole
/// [`crate::api::ProblemBody`], so a body from something other than the service (a proxy's
/// error page, a field of another type) still yields what it has.
fn refusal_fields(body: &[u8]) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let kind = json["type"]
        .as_str()
        .and_then(|t| t.rsplit(':').next())
        .unwrap_or("")
        .to_string();
    let detail = json["detail"].as_str().unwrap_or("").to_string();
    (kind, detail)
}

#[cfg(test)]
mod tests {
    use super::{audit_path, parse_url, refusal_fields, AuditQuery};

    #[test]
    fn refusal_fields_take_what_the_body_has() {
        let cases: [(&[u8], &str, &str); 5] = [
            (
                br#"{"type":"urn:nbdcrypt:keyd:not-owner","title":"Forbidden","status":403,"detail":"d","audit_seq":4}"#,
                "not-owner",
                "d",
            ),
            // A field of another type loses only itself.
            (br#"{"type":"urn:nbdcrypt:keyd:role","detail":null}"#, "role", ""),
            (br#"{"status":"Forbidden","detail":"by proxy"}"#, "", "by proxy"),
            (b"<html>502 Bad Gateway</html>", "", ""),
            (b"", "", ""),
        ];
        for (body, kind, detail) in cases {
            assert_eq!(
                refusal_fields(body),
                (kind.to_string(), detail.to_string()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn audit_paths() {
        let q = |after, limit| AuditQuery { after, limit };
        let cases = [
            (q(None, None), "/v1/audit"),
            (q(Some(7), None), "/v1/audit?after=7"),
            (q(None, Some(5)), "/v1/audit?limit=5"),
            (q(Some(0), Some(10)), "/v1/audit?after=0&limit=10"),
        ];
        for (query, path) in cases {
            assert_eq!(audit_path(&query), path);
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:8443").unwrap(),
            ("127.0.0.1".into(), 8443, "127.0.0.1:8443".into())
        );
        assert_eq!(parse_url("https://[::1]:9/").unwrap().0, "::1");
        assert_eq!(parse_url("https://keys.example").unwrap().1, 443);
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("https://x:1/v1").is_err());
    }
}
