//! Escrow of recovery material to the key service (`docs/keyservice-api.md`, `format-spec.md`
//! §9.3): the package format, sealing with `age` to the recovery officers the service
//! publishes, and the upload; used by `escrow`, `format --escrow` and `recovery-key add
//! --escrow`. `recover` (the officer's side) is in `recover.rs`.
//!
//! A recovery password cannot be read back from its keyslot, so it reaches a package only when
//! it is known: when `recovery-key add --escrow` creates it, or when `escrow` is unlocked with
//! it (`--recovery-key`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::SecretBytes;
use crate::format;
use crate::keyservice::api::{EscrowStoreRequest, OfficersReply};
use crate::keyservice::client::{Client, ClientError};
use crate::volume::{self, LoadedHeader, VolumeError};

use super::args::{HeaderArg, Unlocker};
use super::error::CliError;
use super::passphrase::Prompt;
use super::service_args::{
    call_lenient, first_ok, host_client, register, ServiceArgs, ServiceIdentity,
    ServiceIdentityArgs,
};
use super::unlock::{open_loaded, try_unlock, unlock_with_tries, KeySource};

/// `nbdcrypt escrow`.
#[derive(clap::Args)]
pub struct EscrowArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    unlock: Unlocker,
    /// The key service (repeatable: tried in order).
    #[arg(long = "key-service", value_name = "URL", required = true)]
    key_service: Vec<String>,
    #[command(flatten)]
    service: ServiceIdentityArgs,
}

impl EscrowArgs {
    /// Runs `escrow`.
    pub fn run(self) -> Result<(), CliError> {
        escrow(
            &self.image,
            self.header.header.as_deref(),
            &self.unlock.source(),
            &self.service.args(&self.key_service)?,
            &self.service.identity()?,
        )
    }
}

/// Format tag of the package's plaintext (`format-spec.md` §9.3). A reader refuses any other.
pub const ESCROW_FORMAT: &str = "nbdcrypt-escrow/1";

/// The plaintext of an escrow package (`format-spec.md` §9.3): JSON sealed with `age`.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct EscrowPackage {
    /// [`ESCROW_FORMAT`].
    pub format: String,
    /// The volume's UUID as in its LUKS2 header.
    pub volume_uuid: String,
    /// The volume key, lowercase hex (64 bytes → 128 digits).
    pub volume_key: String,
    /// The recovery key, when the package was made while it was known; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryEntry>,
}

/// A recovery key in a package (`format-spec.md` §9.1, §9.3).
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct RecoveryEntry {
    /// The keyslot that holds it.
    pub keyslot: u32,
    /// Its `nbdcrypt-recovery` token's `recovery_id` (8 hex digits).
    pub recovery_id: String,
    /// Its canonical text (8 groups of 6 digits joined by `-`).
    pub password: String,
}

/// The lowest keyslot number not in use.
///
/// Errors: [`VolumeError::InvalidArgument`] when all are in use.
pub fn lowest_free_slot(lh: &LoadedHeader) -> Result<u32, CliError> {
    (0..volume::MAX_KEYSLOTS)
        .find(|s| !lh.metadata.keyslots.contains_key(&format::metadata::Id(*s)))
        .ok_or_else(|| VolumeError::InvalidArgument("All key slots full.".into()).into())
}

/// The `recovery_id` of keyslot `slot` when an `nbdcrypt-recovery` token names it.
fn recovery_id_of(lh: &LoadedHeader, slot: u32) -> Option<String> {
    let s = slot.to_string();
    lh.metadata
        .tokens
        .values()
        .find(|t| {
            t["type"] == format::RECOVERY_TOKEN
                && t["keyslots"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|k| k.as_str() == Some(s.as_str())))
        })
        .map(|t| t["recovery_id"].as_str().unwrap_or("").to_string())
}

/// The keyslots that hold a recovery key (named by an `nbdcrypt-recovery` token).
fn recovery_slots(lh: &LoadedHeader) -> Vec<u32> {
    lh.metadata
        .keyslots
        .keys()
        .map(|k| k.0)
        .filter(|k| recovery_id_of(lh, *k).is_some())
        .collect()
}

/// Seals `plain` with `age` (X25519, ASCII armor) to every recipient (`age1...`).
///
/// Errors: [`CliError::Usage`] for a recipient that does not parse or an encryption failure.
pub fn seal_to_officers(recipients: &[String], plain: &[u8]) -> Result<String, CliError> {
    use std::io::Write;
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e| CliError::Usage(format!("officer recipient {r:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| CliError::Usage(format!("age: {e}")))?;
    let io = |e: std::io::Error| CliError::Usage(format!("age: {e}"));
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(io)?;
    let mut w = enc.wrap_output(armor).map_err(io)?;
    w.write_all(plain).map_err(io)?;
    w.finish().and_then(|a| a.finish()).map_err(io)?;
    String::from_utf8(out).map_err(|_| CliError::Usage("age: armor is not text".into()))
}

/// The recovery officers' `age` recipients published by the service (`GET /v1/officers`).
fn officers(client: &Client, url: &str) -> Result<Vec<String>, ClientError> {
    let reply = call_lenient(client, url, "GET", "/v1/officers", None::<&()>)?;
    Ok(officer_recipients(reply))
}

/// The recipients of a `GET /v1/officers` reply. A reply that is no [`OfficersReply`] (or no
/// JSON: [`serde_json::Value::Null`]) counts as no officers, which the caller reports, not as
/// a failure of the endpoint.
fn officer_recipients(reply: serde_json::Value) -> Vec<String> {
    serde_json::from_value::<OfficersReply>(reply)
        .map(|r| r.officers.into_iter().map(|o| o.recipient).collect())
        .unwrap_or_default()
}

/// Checks, before anything is changed, that the service answers this host and has officers.
///
/// Errors: [`CliError::NoEndpoint`] naming each endpoint's failure; [`CliError::Usage`] when
/// there are no officers.
pub fn preflight(service: &ServiceArgs<'_>) -> Result<(), CliError> {
    let client = host_client(&service.identity, service.timeout).map_err(CliError::Usage)?;
    let (url, list) = first_ok(service.urls, |u| officers(&client, u))?;
    if list.is_empty() {
        return Err(no_officers(&url));
    }
    Ok(())
}

fn no_officers(url: &str) -> CliError {
    CliError::Usage(format!(
        "{url}: the key service has no recovery officers (nbdcrypt-keyd officer add NAME AGE-RECIPIENT)"
    ))
}

/// Registers volume `uuid` (this host becomes its owner), seals the package of `vk` and
/// `recovery` to the officers, and uploads it (`PUT /v1/volumes/{uuid}/escrow`, replacing any
/// earlier package), at the first endpoint of `service` that answers.
///
/// Returns the endpoint and the number of officers. Errors: [`CliError::NoEndpoint`] naming
/// each endpoint's failure, [`CliError::Usage`] when the service has no officers; nothing is
/// stored then.
pub fn escrow_volume(
    uuid: &str,
    vk: &SecretBytes,
    recovery: Option<RecoveryEntry>,
    service: &ServiceArgs<'_>,
) -> Result<(String, usize), CliError> {
    let client = host_client(&service.identity, service.timeout).map_err(CliError::Usage)?;
    let (url, list) = first_ok(service.urls, |u| {
        register(&client, u, uuid)?;
        officers(&client, u)
    })?;
    if list.is_empty() {
        return Err(no_officers(&url));
    }
    let package = EscrowPackage {
        format: ESCROW_FORMAT.into(),
        volume_uuid: uuid.into(),
        volume_key: vk.expose().iter().map(|b| format!("{b:02x}")).collect(),
        recovery,
    };
    let plain = Zeroizing::new(
        serde_json::to_vec(&package).map_err(|e| CliError::Usage(format!("package: {e}")))?,
    );
    let sealed = seal_to_officers(&list, &plain)?;
    let req = EscrowStoreRequest {
        package: sealed.as_str(),
    };
    call_lenient(
        &client,
        &url,
        "PUT",
        &format!("/v1/volumes/{uuid}/escrow"),
        Some(&req),
    )
    .map_err(|e| CliError::Usage(format!("escrow upload failed: {e}")))?;
    Ok((url, list.len()))
}

/// `escrow IMAGE --key-service URL...`: unlocks the volume (without a key flag, through its
/// key-service keyslot when it has one, as `open` does, on the host that owns it; else, or
/// when that fails at a terminal, with the passphrase) and escrows its volume key and UUID,
/// plus the recovery key when the volume was unlocked with one (`--recovery-key`). When a
/// recovery keyslot exists but its key is not known, says so: the new package, which replaces
/// any earlier one, does not hold it.
///
/// Errors: unlock failures; [`CliError::Usage`] when the service has no officers,
/// [`CliError::NoEndpoint`] when every endpoint fails (each named).
fn escrow(
    image: &Path,
    header: Option<&Path>,
    source: &KeySource,
    service: &ServiceArgs<'_>,
    identity: &ServiceIdentity,
) -> Result<(), CliError> {
    let (o, lh) = open_loaded(image, header, volume::Access::Inspect)?;
    let mut via_service = None;
    if matches!(source, KeySource::Prompt) {
        let access = volume::Access::Inspect;
        match super::keyservice::unlock(&o.header, &o.header_path, &lh, None, identity, access) {
            Ok(k) => via_service = k,
            Err(failures) => {
                let msg = format!("unlock through the key service failed:\n  {failures}");
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    return Err(CliError::KeyService(msg));
                }
                eprintln!("{msg}\nFalling back to the passphrase.");
            }
        }
    }
    let mut used: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    let unlocked = match via_service {
        Some(k) => k,
        None => unlock_with_tries(source, image, Prompt::Unlock(image), |p| {
            let k = try_unlock(&o.header, &o.header_path, &lh, p, None)?;
            used.clear();
            used.extend_from_slice(p);
            Ok(k)
        })?,
    };
    let recovery = match (source, recovery_id_of(&lh, unlocked.keyslot)) {
        (KeySource::Recovery(_), Some(recovery_id)) => Some(RecoveryEntry {
            keyslot: unlocked.keyslot,
            recovery_id,
            password: String::from_utf8_lossy(&used).into_owned(),
        }),
        _ => None,
    };
    let unknown: Vec<String> = recovery_slots(&lh)
        .into_iter()
        .filter(|s| recovery.as_ref().map(|r| r.keyslot) != Some(*s))
        .map(|s| s.to_string())
        .collect();
    let (url, n) = escrow_volume(&lh.header.uuid, &unlocked.key, recovery, service)?;
    eprintln!(
        "Volume key of {} escrowed to {n} recovery officer(s) at {url}.",
        image.display(),
    );
    if !unknown.is_empty() {
        eprintln!(
            "warning: the recovery key of keyslot {} cannot be read back from the header and is not in the package (it replaced any earlier one); to escrow it, run escrow with --recovery-key and type it",
            unknown.join(", ")
        );
    }
    Ok(())
}

/// `format --escrow URL...`, after the volume was formatted: unlocks keyslot 0 with `pass`
/// and escrows the volume key and UUID. A failure leaves a usable volume without a package;
/// the error says so and what to run (also `wipe` when `wipe_pending`: `format --wipe` stops
/// before wiping then).
///
/// Errors: as [`escrow_volume`], with that hint.
pub fn after_format(
    image: &Path,
    header: Option<&Path>,
    pass: &[u8],
    service: &ServiceArgs<'_>,
    wipe_pending: bool,
) -> Result<(), CliError> {
    let (o, lh) = open_loaded(image, header, volume::Access::Inspect)?;
    let k = try_unlock(&o.header, &o.header_path, &lh, pass, Some(0))?;
    let hint = || {
        let h = header.map_or(String::new(), |h| format!(" --header {}", h.display()));
        let wipe = if wipe_pending {
            format!(
                ", then `nbdcrypt wipe {}{h}` (not done yet)",
                image.display()
            )
        } else {
            String::new()
        };
        format!(
            "{} was formatted (UUID {}) and opens with its passphrase, but has no escrow package: run `nbdcrypt escrow {}{h} --key-service {}`{wipe}",
            image.display(),
            lh.header.uuid,
            image.display(),
            service.urls.first().map_or("URL", |u| u.as_str())
        )
    };
    match escrow_volume(&lh.header.uuid, &k.key, None, service) {
        Ok((url, n)) => {
            eprintln!("Volume key escrowed to {n} recovery officer(s) at {url}.");
            Ok(())
        }
        Err(e) => Err(CliError::Hinted(Box::new(e), hint())),
    }
}

#[cfg(test)]
mod tests {
    use super::officer_recipients;
    use serde_json::json;

    #[test]
    fn officers_reply_is_read_leniently() {
        let reply = json!({"officers": [
            {"name": "olga", "recipient": "age1a"},
            {"name": "otto", "recipient": "age1b"},
        ]});
        assert_eq!(officer_recipients(reply), ["age1a", "age1b"]);
        for other in [
            serde_json::Value::Null,
            json!({}),
            json!({"officers": 3}),
            json!({"officers": []}),
        ] {
            assert!(officer_recipients(other).is_empty());
        }
    }
}
