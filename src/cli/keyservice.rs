//! Volume commands that use the key service (`docs/keyservice-api.md`, `format-spec.md` §9.2):
//! `add-key --key-service`.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;

use crate::crypto::SecretBytes;
use crate::format;
use crate::keyservice::client::{Client, ClientError, Identity};
use crate::volume::{self, KdfChoice, KdfKind, NewKeyslot, VolumeError};

use super::passphrase::{unlock_with_tries, Source};
use super::CliError;

/// Length of a key-service keyslot's random secret, bytes.
pub const SECRET_LEN: usize = 32;
/// PBKDF2 iterations of a key-service keyslot: the secret has full entropy, so the KDF adds
/// nothing but time (1000 is cryptsetup's minimum).
pub const SECRET_PBKDF2_ITERATIONS: u32 = 1000;

/// The key service settings of a command.
pub struct ServiceArgs<'a> {
    /// Endpoint URLs, tried in order.
    pub urls: &'a [String],
    /// The host identity.
    pub identity: Identity,
    /// Per-endpoint timeout.
    pub timeout: Duration,
}

/// Calls `f` on each URL in order until one succeeds; all failures are listed otherwise.
fn first_ok<T>(
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
    Err(CliError::Usage(format!(
        "no key service endpoint worked:\n  {}",
        failures.join("\n  ")
    )))
}

/// `add-key IMAGE --key-service URL... --kek NAME`: a new keyslot for a random 32-byte secret
/// (PBKDF2, [`SECRET_PBKDF2_ITERATIONS`]), the secret wrapped by the service for this volume
/// and slot, and an `nbdcrypt-keyservice` token with the wrapped blob, in one header commit.
///
/// Errors: unlock failures as `add-key`; [`CliError::Usage`] naming each endpoint's failure.
pub fn add_key(
    image: &Path,
    source: Source<'_>,
    service: &ServiceArgs<'_>,
    kek: &str,
    slot: Option<u32>,
) -> Result<(), CliError> {
    let (file, lh) = super::keyslots::open_for_update(image)?;
    let vk = unlock_with_tries(source, image, |p| {
        super::try_unlock(&file, image, &lh, p, None)
    })?
    .key;
    let slot = match slot {
        Some(s) => s,
        None => (0..volume::MAX_KEYSLOTS)
            .find(|s| !lh.metadata.keyslots.contains_key(&format::metadata::Id(*s)))
            .ok_or_else(|| VolumeError::InvalidArgument("All key slots full.".into()))?,
    };
    let uuid = lh.header.uuid.clone();
    let secret = SecretBytes::random(SECRET_LEN).map_err(VolumeError::from)?;
    let client = Client::new(&service.identity, service.timeout)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let (url, wrapped) = first_ok(service.urls, |u| {
        client.call(u, "POST", "/v1/volumes", Some(&json!({ "uuid": uuid })))?;
        client.call(
            u,
            "POST",
            &format!("/v1/volumes/{uuid}/wrap"),
            Some(&json!({"slot": slot, "kek": kek, "secret": B64.encode(secret.expose())})),
        )
    })?;
    let version = wrapped["version"].as_u64().unwrap_or(0);
    let blob = wrapped["blob"].as_str().unwrap_or("");
    if version == 0 || blob.is_empty() {
        return Err(CliError::Usage(format!(
            "{url}: the wrap reply lacks version or blob"
        )));
    }
    let token = json!({
        "type": format::KEYSERVICE_TOKEN,
        "keyslots": [],
        "urls": service.urls,
        "kek": kek,
        "kek_version": version,
        "blob": blob,
    });
    let kdf = KdfChoice {
        kind: KdfKind::Pbkdf2,
        force_iterations: Some(SECRET_PBKDF2_ITERATIONS),
        ..KdfChoice::default()
    };
    let id = volume::add_keyslot(
        &file,
        image,
        &lh,
        &vk,
        NewKeyslot {
            passphrase: secret.expose(),
            slot: Some(slot),
            kdf: &kdf,
            token: Some(token),
        },
    )?;
    eprintln!(
        "Key slot {id} created, unlocked by the key service ({url}, KEK {kek} version {version})."
    );
    Ok(())
}
