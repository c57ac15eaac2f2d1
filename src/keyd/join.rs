//! `nbdcrypt-keyd join`, run on a host: redeem a join token at the service for a client
//! certificate (`POST /v1/join`, `docs/keyservice-api.md`); the private key is made here and
//! never leaves the host.

use std::path::Path;

use zeroize::Zeroizing;

use super::error::KeydError;
use super::files::write_file;

/// `join`: a P-256 key made here, its public point sent with the token to `POST /v1/join`,
/// the certificate written beside the key (0600) and a copy of the CA.
pub fn join(url: &str, token: &str, ca: &Path, out: &Path, timeout: f64) -> Result<(), KeydError> {
    use crate::keyservice::api::{JoinRequest, SecretString};
    use crate::keyservice::client::Client;
    let fail = |detail: String| KeydError::Join(detail);
    if !(timeout > 0.0 && timeout <= 3600.0) {
        return Err(fail("--timeout takes 0 to 3600 seconds".into()));
    }
    let files = [
        out.join("host.key"),
        out.join("host.pem"),
        out.join("ca.pem"),
    ];
    if let Some(f) = files.iter().find(|f| f.exists()) {
        return Err(fail(format!("{} exists already", f.display())));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| fail(format!("key generation: {e}")))?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    let client = Client::anonymous(ca, std::time::Duration::from_secs_f64(timeout))
        .map_err(|e| fail(e.to_string()))?;
    use base64::Engine;
    let point = base64::engine::general_purpose::STANDARD.encode(key.public_key_raw());
    let req = JoinRequest {
        token: SecretString(Zeroizing::new(token.to_string())),
        public_key: point.as_str(),
    };
    let r = client.join(url, &req).map_err(|e| fail(e.to_string()))?;
    let ca_pem = std::fs::read(ca).map_err(|source| KeydError::Io {
        path: ca.into(),
        source,
    })?;
    std::fs::create_dir_all(out).map_err(|source| KeydError::Io {
        path: out.into(),
        source,
    })?;
    write_file(&files[0], key_pem.as_bytes(), 0o600)?;
    write_file(&files[1], r.certificate.as_bytes(), 0o644)?;
    write_file(&files[2], &ca_pem, 0o644)?;
    println!(
        "joined as host {}: certificate {} key {}",
        r.host,
        files[1].display(),
        files[0].display()
    );
    Ok(())
}
