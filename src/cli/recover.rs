//! `recover IMAGE --key-service URL --token-file T --identity OFFICER.key`: a recovery officer
//! fetches the volume's escrow package (`GET /v1/volumes/{uuid}/escrow`, officer role, audited
//! by the service), opens it locally with the officer's `age` identity, checks that it is this
//! volume's (UUID, then the volume key against the header's digest), and adds a passphrase
//! keyslot as `add-key` does (`docs/keyservice-api.md`, `format-spec.md` §9.3).

use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::crypto::SecretBytes;
use crate::keyservice::api::EscrowFetchReply;
use crate::keyservice::client::Client;
use crate::volume::{self, KdfChoice};

use super::args::{HeaderArg, KdfArgs};
use super::error::CliError;
use super::escrow::{EscrowPackage, ESCROW_FORMAT};
use super::service_args::{call_lenient, first_ok, OfficerTlsArgs};
use super::unlock::open_for_update;

/// `nbdcrypt recover`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("officer_token").required(true).args(["token", "token_file"])))]
pub struct RecoverArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    /// The key service (repeatable: tried in order).
    #[arg(long = "key-service", value_name = "URL", required = true)]
    key_service: Vec<String>,
    /// Your officer bearer token (`nbdcrypt-keyd token add NAME --role officer`) on the command
    /// line. Discouraged: any local user sees it in the process list; use --token-file.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Your officer bearer token from FILE (`-` = stdin; one trailing newline is dropped).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Your age identity file (`age-keygen -o OFFICER.key`).
    #[arg(long, value_name = "OFFICER.key")]
    identity: PathBuf,
    #[command(flatten)]
    tls: OfficerTlsArgs,
    /// The new passphrase, from FILE byte for byte (default: prompt; `-` = all of stdin).
    #[arg(long, value_name = "FILE", visible_alias = "key-file")]
    new_keyfile: Option<PathBuf>,
    /// The new keyslot's number (default: the lowest free one).
    #[arg(long, short = 'S', value_name = "N", value_parser = super::args::parse_keyslot)]
    key_slot: Option<u32>,
    #[command(flatten)]
    kdf: KdfArgs,
}

impl RecoverArgs {
    /// Runs `recover`: the officer's token from `--token` or `--token-file`, then [`recover`].
    pub fn run(self) -> Result<(), CliError> {
        let token = match (self.token, &self.token_file) {
            (Some(t), _) => Zeroizing::new(t),
            (None, Some(f)) => {
                let stdin = Path::new("-");
                if f == stdin && self.new_keyfile.as_deref() == Some(stdin) {
                    return Err(CliError::Usage(
                        "--token-file - and --new-keyfile - cannot both read stdin".into(),
                    ));
                }
                crate::keyservice::token_file::read_token_file(f).map_err(CliError::Usage)?
            }
            (None, None) => unreachable!("clap requires --token or --token-file"),
        };
        recover(
            &self.image,
            self.header.header.as_deref(),
            &Officer {
                urls: &self.key_service,
                token: &token,
                ca: &self.tls.key_service_ca,
                timeout: self.tls.timeout()?,
                identity: &self.identity,
            },
            self.new_keyfile.as_deref(),
            self.key_slot,
            &self.kdf.choice(),
        )
    }
}

/// The officer's side of `recover`.
pub struct Officer<'a> {
    /// Key service endpoints, tried in order.
    pub urls: &'a [String],
    /// The officer's bearer token.
    pub token: &'a str,
    /// The service's CA certificate (PEM).
    pub ca: &'a Path,
    /// Per-endpoint timeout.
    pub timeout: Duration,
    /// The officer's `age` identity file (`AGE-SECRET-KEY-1...` lines, as `age-keygen` writes).
    pub identity: &'a Path,
}

/// Opens an armored `age` package with the identities of `identity`.
///
/// Errors: [`CliError::KeyService`] (exit 2) when no identity of the file is a recipient of
/// the package; [`CliError::Usage`] for an unreadable identity file or a damaged package.
fn open_package(package: &str, identity: &Path) -> Result<Zeroizing<Vec<u8>>, CliError> {
    use std::io::Read;
    let ids = age::IdentityFile::from_file(identity.display().to_string())
        .map_err(|e| CliError::Usage(format!("age identity {}: {e}", identity.display())))?
        .into_identities()
        .map_err(|e| CliError::Usage(format!("age identity {}: {e}", identity.display())))?;
    if ids.is_empty() {
        return Err(CliError::Usage(format!(
            "age identity {}: no AGE-SECRET-KEY-1 line",
            identity.display()
        )));
    }
    let damaged = |e: &dyn std::fmt::Display| {
        CliError::Usage(format!(
            "the escrow package is not a readable age file: {e}"
        ))
    };
    let reader = age::armor::ArmoredReader::new(package.as_bytes());
    let dec = age::Decryptor::new(reader).map_err(|e| damaged(&e))?;
    let mut stream = match dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
        Ok(s) => s,
        Err(age::DecryptError::NoMatchingKeys) => {
            return Err(CliError::KeyService(format!(
                "the identity in {} is not one of the recovery officers the escrow package is sealed to",
                identity.display()
            )))
        }
        Err(e) => return Err(damaged(&e)),
    };
    let mut plain = Zeroizing::new(Vec::new());
    stream.read_to_end(&mut plain).map_err(|e| damaged(&e))?;
    Ok(plain)
}

/// Parses and checks a package's plaintext against the volume: format tag, UUID, and the
/// volume key against the header's digest.
///
/// Errors: [`CliError::Usage`] naming what does not match.
fn check_package(
    plain: &[u8],
    image: &Path,
    hpath: &Path,
    lh: &volume::LoadedHeader,
) -> Result<SecretBytes, CliError> {
    let pkg: EscrowPackage = serde_json::from_slice(plain)
        .map_err(|e| CliError::Usage(format!("the escrow package's content is not valid: {e}")))?;
    if pkg.format != ESCROW_FORMAT {
        return Err(CliError::Usage(format!(
            "the escrow package has format {:?}; this nbdcrypt reads {ESCROW_FORMAT:?}",
            pkg.format
        )));
    }
    if pkg.volume_uuid != lh.header.uuid {
        return Err(CliError::Usage(format!(
            "the escrow package is for volume {}, not {} (UUID {})",
            pkg.volume_uuid,
            image.display(),
            lh.header.uuid
        )));
    }
    let hex = pkg.volume_key.as_bytes();
    let bytes: Option<Vec<u8>> = hex
        .len()
        .is_multiple_of(2)
        .then(|| {
            hex.chunks(2)
                .map(|c| {
                    std::str::from_utf8(c)
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok())
                })
                .collect()
        })
        .flatten();
    let vk = SecretBytes::new(
        bytes
            .ok_or_else(|| CliError::Usage("the escrow package's volume_key is not hex".into()))?,
    );
    super::unlock::try_verify_volume_key(hpath, lh, vk.expose()).map_err(|e| match e {
        e @ volume::VolumeError::TooSlow { .. } => CliError::from(e),
        _ => CliError::Usage(format!(
            "the escrow package's volume key does not match the header digest of {} (a package from before a reencryption, or a header restored from another volume?)",
            image.display()
        )),
    })?;
    Ok(vk)
}

/// `recover`: see the module documentation and the CLI help.
///
/// Errors: [`CliError::Usage`] for a refusal of the service (each endpoint named, with its
/// status and problem type: `401 bad-token`, `403 role`, `404 no-escrow`, ...), a package for
/// another volume or whose key does not match; [`CliError::KeyService`] (exit 2) when the
/// identity cannot open the package; then as `add-key`.
fn recover(
    image: &Path,
    header: Option<&Path>,
    officer: &Officer<'_>,
    new_keyfile: Option<&Path>,
    slot: Option<u32>,
    kdf: &KdfChoice,
) -> Result<(), CliError> {
    let (file, hpath, lh) = open_for_update(image, header)?;
    let uuid = lh.header.uuid.clone();
    let client = Client::with_token(officer.ca, officer.token, officer.timeout)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let path = format!("/v1/volumes/{uuid}/escrow");
    let (url, reply) = first_ok(officer.urls, |u| {
        call_lenient(&client, u, "GET", &path, None::<&()>)
    })
    .map_err(|e| {
        CliError::Usage(format!(
            "cannot fetch the escrow package of {} (UUID {uuid}): {e}",
            image.display()
        ))
    })?;
    // A 2xx reply of another shape is this endpoint's answer, not a failure to try the next.
    let reply: EscrowFetchReply = serde_json::from_value(reply)
        .map_err(|_| CliError::Usage(format!("{url}: the escrow reply has no package")))?;
    let plain = open_package(&reply.package, officer.identity)?;
    let vk = check_package(&plain, image, &hpath, &lh)?;
    let id =
        super::keyslots::add_passphrase_keyslot(&file, &hpath, &lh, &vk, new_keyfile, slot, kdf)?;
    eprintln!(
        "{} recovered from its escrow package at {url}: key slot {id} opens it with the new passphrase.",
        image.display()
    );
    Ok(())
}
