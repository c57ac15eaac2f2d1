//! Rewrap on unlock (`format-spec.md` §9.2): when the key service says a token's KEK
//! version is below the current one, the secret just unwrapped is wrapped again with the current
//! version and the `nbdcrypt-keyservice` token is updated in the header — a crash-safe header
//! update like every other ([`volume::replace_token`]), done on the image as it is held for
//! serving ([`volume::update_held_header`] raises the locks for the write).
//!
//! The service counts keyslots per KEK version from the wraps and unwraps hosts make: the wrap
//! call records the keyslot at the new version, so `kek show` moves when the rewrap happens.
//! A rewrap that fails (service refuses, header busy, disk error) leaves the old token, which
//! still unlocks until `kek set --min-unwrap-version`; the unlock succeeds with a warning.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use crate::crypto::SecretBytes;
use crate::keyservice::api::{SecretString, WrapRequest};
use crate::keyservice::client::Client;
use crate::volume::{self, Access, LoadedHeader};

/// The token to rewrap and where it lives.
pub(super) struct Target<'a> {
    /// The header file, held open for serving.
    pub file: &'a std::fs::File,
    /// Its path (the image, or the detached header file).
    pub header_path: &'a Path,
    /// The header as loaded when the image was opened (the locks held since keep it current).
    pub lh: &'a LoadedHeader,
    /// How `file` is held ([`Access::ReadShared`] or [`Access::WriteExclusive`]).
    pub access: Access,
    /// The token's id in the header.
    pub token_id: u32,
    /// The token as loaded.
    pub token: &'a serde_json::Value,
}

/// [`rewrap`], logging the outcome: the new version, or a warning naming the failure (the
/// unlock stands either way).
pub(super) fn rewrap_or_warn(
    client: &Client,
    first_url: &str,
    urls: &[String],
    target: &Target<'_>,
    secret: &SecretBytes,
) {
    let old = target.token["kek_version"].as_u64().unwrap_or(0);
    let kek = target.token["kek"].as_str().unwrap_or("");
    match rewrap(client, first_url, urls, target, secret) {
        Ok(v) => tracing::info!(
            token = target.token_id,
            kek,
            from = old,
            to = v,
            "key-service token rewrapped to the KEK's current version"
        ),
        Err(e) => tracing::warn!(
            token = target.token_id,
            kek,
            version = old,
            "unlocked, but rewrapping the key-service token to the KEK's current version \
             failed (it stays at version {old} and still unlocks until that version is \
             retired): {}",
            // It may quote a URL of the header's token.
            crate::format::Printable(&e.to_string())
        ),
    }
}

/// Wraps `secret` again for the token's keyslot with the KEK's current version (trying
/// `first_url`, the endpoint that just unwrapped, then the token's other URLs), and replaces
/// the token's `kek_version` and `blob` in the header. Returns the new version.
///
/// Errors: a text naming each endpoint's failure, or the header update's.
pub(super) fn rewrap(
    client: &Client,
    first_url: &str,
    urls: &[String],
    target: &Target<'_>,
    secret: &SecretBytes,
) -> Result<u32, String> {
    let t = target.token;
    let slot = t["keyslots"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or("the token names no keyslot")?;
    let kek = t["kek"].as_str().ok_or("the token names no KEK")?;
    let old = t["kek_version"].as_u64().unwrap_or(0);
    let uuid = &target.lh.header.uuid;
    let encoded = SecretString(Zeroizing::new(B64.encode(secret.expose())));
    let body = WrapRequest {
        slot,
        kek,
        secret: &encoded,
    };
    let order = std::iter::once(first_url)
        .chain(urls.iter().map(String::as_str).filter(|u| *u != first_url));
    let mut failures = Vec::new();
    let mut wrapped = None;
    for u in order {
        match client.wrap(u, uuid, &body) {
            Ok(w) => {
                wrapped = Some(w);
                break;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let w = wrapped.ok_or_else(|| format!("wrap: {}", failures.join("; ")))?;
    if u64::from(w.version) <= old || w.blob.is_empty() {
        return Err(format!(
            "the service wrapped with version {}, not above {old}",
            w.version
        ));
    }
    let mut token = t.clone();
    token["kek_version"] = w.version.into();
    token["blob"] = w.blob.into();
    volume::update_held_header(target.file, target.header_path, target.access, |f| {
        volume::replace_token(f, target.header_path, target.lh, target.token_id, token)
    })
    .map_err(|e| {
        format!(
            "updating the token in {}: {e}",
            target.header_path.display()
        )
    })?;
    Ok(w.version)
}
