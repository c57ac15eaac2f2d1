//! Volume commands that use the key service (`docs/keyservice-api.md`, `format-spec.md` §9.2):
//! `add-key --key-service`, and unlock through the service for `open` and `serve`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;

use crate::crypto::SecretBytes;
use crate::format;
use crate::keyservice::api::{SecretString, UnwrapRequest, WrapRequest};
use crate::volume::{
    self, Access, KdfChoice, KdfKind, LoadedHeader, NewKeyslot, UnlockedKey, VolumeError,
};
use zeroize::Zeroizing;

use super::error::CliError;
use super::passphrase::Prompt;
use super::service_args::{first_ok, host_client, register, ServiceArgs, ServiceIdentity};
use super::unlock::{open_for_update, try_unlock, unlock_with_tries, KeySource};

/// Length of a key-service keyslot's random secret, bytes.
pub const SECRET_LEN: usize = 32;
/// PBKDF2 iterations of a key-service keyslot: the secret has full entropy, so the KDF adds
/// nothing but time (1000 is cryptsetup's minimum).
pub const SECRET_PBKDF2_ITERATIONS: u32 = 1000;

/// Key-service URLs of one token tried at unlock (and at most given to `add-key
/// --key-service`): a header listing hundreds of dead URLs cannot stall an unlock.
pub const MAX_TOKEN_URLS: usize = 8;
/// Time spent on the key service for one unlock, in `--key-service-timeout`s (default 5 s:
/// 15 s): no endpoint is tried after it, and the unlock falls back or fails.
pub const SERVICE_BUDGET_TIMEOUTS: u32 = 3;

/// The URLs of a key-service token to try, at most [`MAX_TOKEN_URLS`], and how many it lists.
pub fn token_urls(t: &serde_json::Value) -> (Vec<String>, usize) {
    let all = t["urls"].as_array().map_or(&[][..], |a| &a[..]);
    let urls = all
        .iter()
        .filter_map(|u| u.as_str().map(String::from))
        .take(MAX_TOKEN_URLS)
        .collect();
    (urls, all.len())
}

/// `add-key IMAGE --key-service URL... --kek NAME`: a new keyslot for a random 32-byte secret
/// (PBKDF2, [`SECRET_PBKDF2_ITERATIONS`]), the secret wrapped by the service for this volume
/// and slot, and an `nbdcrypt-keyservice` token with the wrapped blob, in one header commit.
///
/// Errors: unlock failures as `add-key`; [`CliError::NoEndpoint`] naming each endpoint's
/// failure; [`CliError::Usage`] for unusable identity files or a wrap reply without a blob.
pub fn add_key(
    image: &Path,
    header: Option<&Path>,
    source: &KeySource,
    service: &ServiceArgs<'_>,
    kek: &str,
    slot: Option<u32>,
) -> Result<(), CliError> {
    if service.urls.len() > MAX_TOKEN_URLS {
        return Err(CliError::Usage(format!(
            "{} --key-service URLs given; a token holds at most {MAX_TOKEN_URLS}",
            service.urls.len()
        )));
    }
    let (file, hpath, lh) = open_for_update(image, header)?;
    let vk = unlock_with_tries(source, image, Prompt::Existing, |p| {
        try_unlock(&file, &hpath, &lh, p, None)
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
    let client = host_client(&service.identity, service.timeout).map_err(CliError::Usage)?;
    let encoded = SecretString(Zeroizing::new(B64.encode(secret.expose())));
    let (url, wrapped) = first_ok(service.urls, |u| {
        register(&client, u, &uuid)?;
        client.wrap(
            u,
            &uuid,
            &WrapRequest {
                slot,
                kek,
                secret: &encoded,
            },
        )
    })?;
    let (version, blob) = (wrapped.version, wrapped.blob.as_str());
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
        &hpath,
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

/// Unlocks through the `nbdcrypt-keyservice` tokens of the header (`format-spec.md` §9.2), only
/// that of `slot` if given: for each token, each of its URLs in order until one unwraps the
/// secret, which must then open the token's keyslot.
///
/// When the service says the KEK has a newer version than the token's, the secret is
/// rewrapped and the token updated ([`super::rewrap::rewrap_or_warn`]; `file` is held as `access`);
/// if that fails the unlock still succeeds and a warning says why.
///
/// Returns `Ok(None)` when the header has no such token; `Err` lists every failure (endpoint
/// by endpoint), for the caller to print before falling back.
pub fn unlock(
    file: &std::fs::File,
    image: &Path,
    lh: &LoadedHeader,
    slot: Option<u32>,
    service: &ServiceIdentity,
    access: Access,
) -> Result<Option<UnlockedKey>, String> {
    let tokens: Vec<(u32, &serde_json::Value)> = lh
        .metadata
        .tokens
        .iter()
        .filter(|(_, t)| t["type"] == format::KEYSERVICE_TOKEN)
        .map(|(id, t)| (id.0, t))
        .collect();
    if tokens.is_empty() {
        return Ok(None);
    }
    let uuid = &lh.header.uuid;
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    let budget = service.timeout * SERVICE_BUDGET_TIMEOUTS;
    'tokens: for (tid, t) in tokens {
        let Some(ks) = t["keyslots"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        if slot.is_some_and(|s| s != ks) {
            continue;
        }
        let client = match host_client(&service.identity, service.timeout) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e);
                break;
            }
        };
        let (urls, listed) = token_urls(t);
        if listed > urls.len() {
            failures.push(format!(
                "token {tid} lists {listed} URLs; only the first {MAX_TOKEN_URLS} are tried"
            ));
        }
        let (kek, version) = (
            t["kek"].as_str().unwrap_or(""),
            t["kek_version"].as_u64().unwrap_or(0),
        );
        let body = UnwrapRequest {
            slot: ks,
            kek,
            version,
            blob: t["blob"].as_str().unwrap_or(""),
        };
        for u in &urls {
            if started.elapsed() >= budget {
                failures.push(format!(
                    "gave up on the key service after {} s ({SERVICE_BUDGET_TIMEOUTS} x --key-service-timeout)",
                    budget.as_secs_f64()
                ));
                break 'tokens;
            }
            let reply = match client.unwrap(u, uuid, &body) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            let secret = match B64.decode(reply.secret.0.as_bytes()) {
                Ok(s) => SecretBytes::new(s),
                _ => {
                    failures.push(format!("{u}: the unwrap reply's secret is not base64"));
                    continue;
                }
            };
            match try_unlock(file, image, lh, secret.expose(), Some(ks)) {
                Ok(k) => {
                    tracing::info!(keyslot = ks, url = %format::Printable(u), "unlocked through the key service");
                    if reply.current_version > version {
                        let target = super::rewrap::Target {
                            file,
                            header_path: image,
                            lh,
                            access,
                            token_id: tid,
                            token: t,
                        };
                        super::rewrap::rewrap_or_warn(&client, u, &urls, &target, &secret);
                    }
                    return Ok(Some(k));
                }
                Err(e) => failures.push(format!(
                    "{u}: the unwrapped secret does not open keyslot {ks}: {e}"
                )),
            }
        }
    }
    if failures.is_empty() {
        failures.push("no nbdcrypt-keyservice token for this keyslot".into());
    }
    // Each failure quotes a URL of a header token: escaped, one line each.
    Err(failures
        .iter()
        .map(|f| format::escape_for_terminal(f))
        .collect::<Vec<_>>()
        .join("\n  "))
}

/// Whether the header of `image` (with its detached `header`, if any; read with
/// [`Access::Inspect`], released at once) has an `nbdcrypt-keyservice` token. `false` when the
/// header cannot be read (serving reports why).
pub fn has_service_token(image: &Path, header: Option<&Path>) -> bool {
    volume::OpenedImage::open(image, header, Access::Inspect)
        .and_then(|o| o.load())
        .is_ok_and(|lh| {
            lh.metadata
                .tokens
                .values()
                .any(|t| t["type"] == format::KEYSERVICE_TOKEN)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token listing 200 URLs yields the first [`MAX_TOKEN_URLS`] and the count listed.
    #[test]
    fn token_urls_are_capped() {
        let many: Vec<String> = (0..200).map(|i| format!("https://h{i}:1/")).collect();
        let (urls, listed) = token_urls(&json!({ "urls": many }));
        assert_eq!((urls.len(), listed), (MAX_TOKEN_URLS, 200));
        assert_eq!(urls[0], "https://h0:1/");
        let (urls, listed) = token_urls(&json!({ "urls": ["https://a/", 5] }));
        assert_eq!((urls, listed), (vec!["https://a/".to_string()], 2));
        assert_eq!(token_urls(&json!({})), (vec![], 0));
    }
}
