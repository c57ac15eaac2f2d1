//! How a command reaches the key service: the host's identity files and the service's CA
//! (clap arguments shared by `format`, `open`, `serve`, `add-key`, `escrow`, `recovery-key
//! add` and `recover`), their checked form ([`ServiceArgs`], [`ServiceIdentity`]),
//! [`first_ok`], which tries the endpoints in order, [`call_lenient`], which sends a typed
//! request of [`crate::keyservice::api`] and reads its reply leniently, and [`register`].

use std::path::PathBuf;
use std::time::Duration;

use crate::keyservice::api::RegisterRequest;
use crate::keyservice::client::{Client, ClientError, Identity};

use super::error::CliError;

/// How this host authenticates to the key service (files from `nbdcrypt-keyd host add` and
/// the service's `ca.pem`), and how long each endpoint may take.
#[derive(clap::Args)]
pub struct ServiceIdentityArgs {
    /// This host's client certificate (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbdcrypt/keyservice/host.pem"
    )]
    key_service_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbdcrypt/keyservice/host.key"
    )]
    key_service_key: PathBuf,
    #[command(flatten)]
    tls: ServiceTlsArgs,
}

/// Which CA the key service's certificate must chain to, and how long each endpoint may take,
/// for hosts ([`ServiceIdentityArgs`]).
#[derive(clap::Args)]
pub struct ServiceTlsArgs {
    /// The key service's CA certificate (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbdcrypt/keyservice/ca.pem"
    )]
    pub key_service_ca: PathBuf,
    /// Seconds each endpoint may take (connect, TLS, reply) before the next is tried.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    key_service_timeout: f64,
}

impl ServiceTlsArgs {
    /// `--key-service-timeout SECONDS`, more than 0 and at most 3600.
    ///
    /// Errors: [`CliError::Usage`] for any other value.
    pub fn timeout(&self) -> Result<Duration, CliError> {
        check_timeout(self.key_service_timeout)
    }
}

/// The key service for an officer (`recover`): the CA has no default, since an officer's
/// machine is not a host and `/etc/nbdcrypt/keyservice/ca.pem` may be another service's.
#[derive(clap::Args)]
pub struct OfficerTlsArgs {
    /// The key service's CA certificate (PEM; its `ca.pem`, from the administrator).
    #[arg(long, value_name = "FILE", required = true)]
    pub key_service_ca: PathBuf,
    /// Seconds each endpoint may take (connect, TLS, reply) before the next is tried.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    key_service_timeout: f64,
}

impl OfficerTlsArgs {
    /// `--key-service-timeout SECONDS`, more than 0 and at most 3600.
    ///
    /// Errors: [`CliError::Usage`] for any other value.
    pub fn timeout(&self) -> Result<Duration, CliError> {
        check_timeout(self.key_service_timeout)
    }
}

/// `--key-service-timeout SECONDS`: more than 0 and at most 3600.
///
/// Errors: [`CliError::Usage`] for any other value.
fn check_timeout(secs: f64) -> Result<Duration, CliError> {
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(CliError::Usage(
            "--key-service-timeout takes seconds, more than 0 and at most 3600".into(),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The key service settings of a command.
pub struct ServiceArgs<'a> {
    /// Endpoint URLs, tried in order.
    pub urls: &'a [String],
    /// The host identity.
    pub identity: Identity,
    /// Per-endpoint timeout.
    pub timeout: Duration,
}

/// The host identity and per-endpoint timeout used to unlock through the service.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// Certificate, key and CA files.
    pub identity: Identity,
    /// Per-endpoint timeout.
    pub timeout: Duration,
}

impl ServiceIdentityArgs {
    /// The identity files and the checked timeout.
    ///
    /// Errors: [`CliError::Usage`] for a timeout out of range.
    pub fn identity(&self) -> Result<ServiceIdentity, CliError> {
        Ok(ServiceIdentity {
            identity: Identity {
                cert: self.key_service_cert.clone(),
                key: self.key_service_key.clone(),
                ca: self.tls.key_service_ca.clone(),
            },
            timeout: self.tls.timeout()?,
        })
    }

    /// [`ServiceIdentityArgs::identity`] with the endpoints `urls`.
    pub fn args<'a>(&self, urls: &'a [String]) -> Result<ServiceArgs<'a>, CliError> {
        let id = self.identity()?;
        Ok(ServiceArgs {
            urls,
            identity: id.identity,
            timeout: id.timeout,
        })
    }
}

/// A client with this host's identity ([`Client::new`]); when one of its files does not
/// exist, the error says how a host gets them.
///
/// Errors: [`Client::new`]'s, as text, with the hint for a missing file.
pub fn host_client(id: &Identity, timeout: Duration) -> Result<Client, String> {
    Client::new(id, timeout).map_err(|e| match missing_identity_hint(id) {
        Some(hint) => format!("{e}; {hint}"),
        None => e.to_string(),
    })
}

/// How to get this host's identity files, when one of `id`'s does not exist: the flags, or
/// `nbdcrypt-keyd join` / `host add`, which write the default layout.
pub fn missing_identity_hint(id: &Identity) -> Option<String> {
    let missing = [&id.cert, &id.key, &id.ca]
        .into_iter()
        .find(|p| !p.exists())?;
    Some(format!(
        "{} does not exist: give this host's files with --key-service-cert, --key-service-key \
         and --key-service-ca, or put them in /etc/nbdcrypt/keyservice (`nbdcrypt-keyd join URL \
         --token-file T --ca ca.pem` on this host, or the directory `nbdcrypt-keyd host add NAME \
         --out-dir DIR` wrote on the service)",
        missing.display()
    ))
}

/// Calls `f` on each URL in order until one succeeds; all failures are listed otherwise.
///
/// Returns the URL that answered and its result. Errors: [`CliError::NoEndpoint`].
pub fn first_ok<T>(
    urls: &[String],
    mut f: impl FnMut(&str) -> Result<T, ClientError>,
) -> Result<(String, T), CliError> {
    let mut failures = Vec::new();
    for u in urls {
        match f(u) {
            Ok(v) => return Ok((u.clone(), v)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(CliError::NoEndpoint { failures })
}

/// `method` `url` + `path` with the wire request `body` (a type of
/// [`crate::keyservice::api`]), through [`Client::call`]: the reply of a 2xx status as JSON,
/// [`serde_json::Value::Null`] when it is not JSON. For the calls whose reply the CLI ignores
/// or reads leniently (register, escrow upload, officers, escrow fetch), where the client's
/// typed methods would turn a reply of another shape into a failure of the endpoint.
///
/// Errors: as [`Client::call`]; [`ClientError::Transport`] (`request body: ...`) when `body`
/// does not serialise, as [`Client::call_secret`] words it.
pub fn call_lenient(
    client: &Client,
    url: &str,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<serde_json::Value, ClientError> {
    let body = body
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ClientError::Transport {
            url: url.into(),
            detail: format!("request body: {e}"),
        })?;
    client.call(url, method, path, body.as_ref())
}

/// `POST /v1/volumes`: registers volume `uuid` to this host (again is fine: the owner's
/// repeat is accepted). Any 2xx reply means registered; its body is not read.
pub fn register(client: &Client, url: &str, uuid: &str) -> Result<(), ClientError> {
    let req = RegisterRequest { uuid };
    call_lenient(client, url, "POST", "/v1/volumes", Some(&req)).map(drop)
}

#[cfg(test)]
mod tests {
    use crate::keyservice::api::{EscrowStoreRequest, RegisterRequest};
    use serde_json::json;

    /// The typed requests sent through [`super::call_lenient`] are the bodies the CLI built
    /// with `json!` before.
    #[test]
    fn typed_requests_are_the_former_bodies() {
        let got = serde_json::to_value(RegisterRequest { uuid: "u-1" }).unwrap();
        assert_eq!(got, json!({"uuid": "u-1"}));
        let got = serde_json::to_value(EscrowStoreRequest {
            package: "-----BEGIN",
        })
        .unwrap();
        assert_eq!(got, json!({"package": "-----BEGIN"}));
        assert_eq!(got.to_string(), r#"{"package":"-----BEGIN"}"#);
    }
}
