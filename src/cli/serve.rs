//! Serving volumes over NBD, for `nbdcrypt open`, `nbdcrypt serve` and `nbdcrypt demo`: unlock
//! one or several volumes and serve them until SIGINT or SIGTERM, then finish in-flight
//! requests, flush, wipe the keys and exit 0. Also `serve`'s arguments ([`ServeArgs`]) and
//! the exports they describe ([`serve_exports`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use crate::nbd::{self, BlockExport, ExportConfig, Listen, ServerOptions, TlsMode};
use crate::volume::{self, Access, Discard, Volume};

use super::args::{parse_named_path, DiscardArg, CRYPTSETUP_DISCARD_WARNING};
use super::error::CliError;
use super::passphrase::Prompt;
use super::server_args::{ServerArgs, ServerFlags};
use super::service_args::ServiceIdentityArgs;
use super::unlock::{open_loaded, try_unlock, unlock_with_tries, KeySource};

/// `nbdcrypt serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// An export: NAME=IMAGE (repeatable; the name is everything before the first `=`).
    #[arg(long = "export", value_name = "NAME=IMAGE", required = true, value_parser = parse_named_path)]
    exports: Vec<(String, PathBuf)>,
    /// The passphrase of export NAME, from FILE byte for byte (`-` = all of stdin; one
    /// export at most). Exports without one are prompted for, each naming its image.
    #[arg(long, short = 'd', value_name = "NAME=FILE", value_parser = parse_named_path)]
    key_file: Vec<(String, PathBuf)>,
    /// Export NAME's description for clients (`nbdinfo --list`), instead of the default
    /// "nbdcrypt LUKS2 volume", which names no server path (repeatable, once per export).
    #[arg(long, value_name = "NAME=TEXT", value_parser = parse_named_text)]
    export_description: Vec<(String, String)>,
    /// Export NAME's detached LUKS2 header (as cryptsetup's --header): its IMAGE then holds
    /// only the encrypted data (repeatable, once per export).
    #[arg(long, value_name = "NAME=FILE", value_parser = parse_named_path)]
    header: Vec<(String, PathBuf)>,
    /// Unlock export NAME with a recovery key: from FILE, or prompted without `=FILE`.
    #[arg(long, value_name = "NAME[=FILE]")]
    recovery_key: Vec<String>,
    /// Serve read-only (writes fail with EPERM): every export, or with `=NAME` only that
    /// one (repeatable).
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    read_only: Vec<String>,
    /// What TRIM does: `POLICY` for every export, or `NAME=POLICY` for one (repeatable);
    /// ignore (default) or passdown (punches holes: leaks usage; see `open --help`).
    #[arg(long, value_name = "[NAME=]POLICY")]
    discard: Vec<String>,
    #[command(flatten)]
    server: ServerFlags,
    /// Exports without --key-file or --recovery-key whose header has an
    /// nbdcrypt-keyservice token are unlocked through the key service first (a terminal
    /// prompt if that fails, else exit 2).
    #[command(flatten)]
    service: ServiceIdentityArgs,
}

impl ServeArgs {
    /// Runs `serve`: the exports from the flags, each without a key flag unlocked through the
    /// key service first (`--key-service-cert`, ...).
    pub fn run(self) -> Result<(), CliError> {
        let mut exports = serve_exports(
            self.exports,
            self.header,
            self.key_file,
            self.recovery_key,
            self.read_only,
            self.discard,
        )?;
        for (name, text) in self.export_description {
            set_description(&mut exports, &name, text)?;
        }
        let identity = self.service.identity()?;
        for x in &mut exports {
            if let KeySource::Prompt = x.key {
                x.key = KeySource::KeyService(identity.clone());
            }
        }
        serve(exports, self.server.args())
    }
}

/// One image to serve under a name.
pub struct ImageExport {
    /// Export name (`open`: `--export-name` or the image's stem; `serve`: `--export NAME=…`).
    pub name: String,
    /// Image file.
    pub image: PathBuf,
    /// `--header`: a detached LUKS2 header file; `image` then holds only the data.
    pub header: Option<PathBuf>,
    /// Where its secret comes from: `--key-file`, `--recovery-key`, the key service (`open`
    /// and `serve` without either flag) or the prompt.
    pub key: KeySource,
    /// `--key-slot`.
    pub key_slot: Option<u32>,
    /// Serve read-only: writes fail with `EPERM`, the image is locked shared.
    pub read_only: bool,
    /// What TRIM does (`--discard`).
    pub discard: Discard,
    /// `--export-description`: what clients are told the export is; `None` =
    /// [`DEFAULT_DESCRIPTION`].
    pub description: Option<String>,
}

/// The description every export gets unless the operator gives one: it names no server path,
/// since clients read it before they authenticate (`NBD_OPT_LIST`, `NBD_INFO_DESCRIPTION`).
pub const DEFAULT_DESCRIPTION: &str = "nbdcrypt LUKS2 volume";

/// The description sent to clients for an export: the operator's `custom` text, else
/// [`DEFAULT_DESCRIPTION`] (never the image's path).
pub fn export_description(custom: Option<&str>) -> String {
    custom.unwrap_or(DEFAULT_DESCRIPTION).to_string()
}

/// Check an `--export-description` TEXT: at most the protocol's 4096 bytes.
pub fn check_description(text: &str) -> Result<(), CliError> {
    if text.len() > crate::nbd::proto::MAX_STRING {
        return Err(CliError::Usage(format!(
            "--export-description is {} bytes, over the protocol's {} bytes",
            text.len(),
            crate::nbd::proto::MAX_STRING
        )));
    }
    Ok(())
}

/// Parse `serve --export-description NAME=TEXT` (the name is everything before the first `=`;
/// TEXT may be empty).
fn parse_named_text(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, text)) if !name.is_empty() => Ok((name.to_string(), text.to_string())),
        _ => Err(format!("{s:?} is not NAME=TEXT")),
    }
}

/// Give export `name` of `exports` the description `text` (once per export).
fn set_description(exports: &mut [ImageExport], name: &str, text: String) -> Result<(), CliError> {
    check_description(&text)?;
    let Some(x) = exports.iter_mut().find(|x| x.name == name) else {
        return Err(CliError::Usage(format!(
            "--export-description names export {name:?}, which is not among the exports"
        )));
    };
    if x.description.is_some() {
        return Err(CliError::Usage(format!(
            "--export-description is given twice for export {name}"
        )));
    }
    x.description = Some(text);
    Ok(())
}

/// Default TCP address (IANA's NBD port on loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

/// The export name for an image: its file stem (`vol` for `vol.img`).
pub fn default_export_name(image: &Path) -> String {
    image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vol".into())
}

/// `nbdcrypt open`: open the image (locks first, so a missing, busy or invalid image is
/// refused before the passphrase is asked for), unlock it and serve it until a signal.
pub fn open(export: ImageExport, server: ServerArgs) -> Result<(), CliError> {
    serve_with(vec![export], server, None, false)
}

/// `nbdcrypt serve`: several images, each under its own name, in one server. Every image is
/// opened and locked first (so a missing or busy one is refused before any passphrase is
/// asked for), then unlocked in turn (each prompt names its image). If one fails, the volumes
/// unlocked so far are dropped (keys wiped, locks released) and the error names the export.
/// The first export is also the default export `""`.
pub fn serve(exports: Vec<ImageExport>, server: ServerArgs) -> Result<(), CliError> {
    serve_with(exports, server, None, true)
}

/// Name the export in an error of `serve` (the exit code and hint stay those of `e`).
fn in_export(named: bool, x: &ImageExport, e: impl Into<CliError>) -> CliError {
    let e = e.into();
    if !named {
        return e;
    }
    CliError::Export {
        name: x.name.clone(),
        image: x.image.clone(),
        source: Box::new(e),
    }
}

/// At most one export may read its secret from stdin: a `-` key file, or no key file with a
/// non-terminal stdin (one line each would be ambiguous; an export unlocked through the key
/// service reads nothing). Checked before anything is opened for serving.
fn check_stdin_readers(exports: &[ImageExport]) -> Result<(), CliError> {
    let readers = stdin_readers(exports, std::io::stdin().is_terminal(), |x| {
        super::keyservice::has_service_token(&x.image, x.header.as_deref())
    });
    if readers.len() > 1 {
        return Err(CliError::Usage(format!(
            "exports {} would all read their passphrase from stdin; give each a --key-file NAME=FILE (or run at a terminal to be prompted for each)",
            readers.join(", ")
        )));
    }
    Ok(())
}

/// The names of the exports that would read their secret from stdin, given whether stdin is a
/// terminal (`tty`) and whether an export's header has a key-service token (`has_token`,
/// asked only for [`KeySource::KeyService`] without a terminal).
fn stdin_readers(
    exports: &[ImageExport],
    tty: bool,
    has_token: impl Fn(&ImageExport) -> bool,
) -> Vec<&str> {
    exports
        .iter()
        .filter(|x| match &x.key {
            KeySource::KeyFile(f) | KeySource::Recovery(Some(f)) => f == Path::new("-"),
            KeySource::Recovery(None) | KeySource::Prompt => !tty,
            KeySource::KeyService(_) => !tty && !has_token(x),
        })
        .map(|x| x.name.as_str())
        .collect()
}

/// Open, unlock and serve `exports`, printing `banner` once the listeners are up. `named`:
/// errors name the export (`serve`).
pub(super) fn serve_with(
    exports: Vec<ImageExport>,
    server: ServerArgs,
    banner: Option<String>,
    named: bool,
) -> Result<(), CliError> {
    let ServerArgs {
        mut listen,
        socket,
        pid_file,
        max_connections,
        handshake_limit,
        inline_limit,
        bounds,
        tls,
        fork,
    } = server;
    // TLS files first: a bad certificate is refused before any passphrase is asked for.
    let tls = tls.load()?;
    // First, before any thread exists: it edits the environment.
    let inherited = nbd::activation::listen_fds()?;
    if !inherited.is_empty() && (!listen.is_empty() || !socket.is_empty()) {
        return Err(CliError::Usage(
            "--listen/--socket cannot be used with socket activation (LISTEN_FDS): the sockets come from the service manager".into(),
        ));
    }
    check_stdin_readers(&exports)?;
    let listeners: Vec<Listen> = if inherited.is_empty() {
        if listen.is_empty() && socket.is_empty() {
            listen.push(DEFAULT_LISTEN.parse().expect("valid default address"));
        }
        let mut l: Vec<Listen> = listen.into_iter().map(Listen::Tcp).collect();
        l.extend(socket.into_iter().map(Listen::Unix));
        l
    } else {
        inherited
    };
    // A busy port or an unwritable pid file is said before the passphrase and its KDF.
    nbd::preflight::check_listeners(&listeners)?;
    if let Some(p) = &pid_file {
        nbd::preflight::check_pid_file(p)?;
    }
    // Before any thread exists and before the images are locked.
    let ready = super::daemon::fork_if(fork)?;
    let vols = unlock_all(&exports, named, tls.mode())?;
    let options = ServerOptions {
        max_connections,
        pid_file,
        tls,
        handshake_limit: (handshake_limit > 0).then(|| Duration::from_secs(handshake_limit)),
        inline_limit: Some(inline_limit),
        max_handshakes: bounds.max_handshakes,
        idle_limit: (bounds.idle_limit > 0).then(|| Duration::from_secs(bounds.idle_limit)),
        max_buffered: Some(match bounds.max_buffered {
            Some(b) => usize::try_from(b).unwrap_or(usize::MAX),
            None => nbd::budget::default_max_buffered(),
        }),
    };
    run_server(listeners, vols, options, banner, ready)
}

/// The first pair of exports (earlier, later) that name the same image file (same device and
/// inode, whatever the path) where either is read-write: its lock would refuse the second as
/// "in use by another process" though it is this one. Images that cannot be looked up are
/// left to the open that follows (which names what is wrong).
fn same_image_twice(exports: &[ImageExport]) -> Option<(usize, usize)> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<Option<(u64, u64)>> = exports
        .iter()
        .map(|x| std::fs::metadata(&x.image).ok().map(|m| (m.dev(), m.ino())))
        .collect();
    let writable: Vec<bool> = exports.iter().map(|x| !x.read_only).collect();
    first_conflict(&ids, &writable)
}

/// [`same_image_twice`]'s decision: the first (i, j), i < j, with `ids[i] == ids[j]` (both
/// known) and `writable[i] || writable[j]`.
fn first_conflict(ids: &[Option<(u64, u64)>], writable: &[bool]) -> Option<(usize, usize)> {
    (1..ids.len()).find_map(|j| {
        (0..j).find_map(|i| {
            (ids[i].is_some() && ids[i] == ids[j] && (writable[i] || writable[j])).then_some((i, j))
        })
    })
}

/// Open and lock every image (a missing, busy or invalid one is refused before any passphrase
/// is asked for), then unlock them in turn; `named`: errors name the export (`serve`). `tls`
/// only goes into the log line. Returns each export's configuration and volume.
pub(super) fn unlock_all(
    exports: &[ImageExport],
    named: bool,
    tls: TlsMode,
) -> Result<Vec<(ExportConfig, Arc<Volume>)>, CliError> {
    if let Some((first, again)) = same_image_twice(exports) {
        let (a, b) = (&exports[first], &exports[again]);
        return Err(CliError::Usage(format!(
            "export {}: {} is already export {} of this server; an image can be served read-write by one export only",
            crate::format::escape_for_terminal(&b.name),
            crate::format::escape_for_terminal(&b.image.display().to_string()),
            crate::format::escape_for_terminal(&a.name),
        )));
    }
    let mut opened = Vec::with_capacity(exports.len());
    for x in exports {
        let access = if x.read_only {
            Access::ReadShared
        } else {
            Access::WriteExclusive
        };
        let (o, lh) = open_loaded(&x.image, x.header.as_deref(), access)
            .map_err(|e| in_export(named, x, e))?;
        opened.push((o, lh));
    }
    let mut vols: Vec<(ExportConfig, Arc<Volume>)> = Vec::with_capacity(exports.len());
    for (x, (o, lh)) in exports.iter().zip(opened) {
        let mut via_service = None;
        if let KeySource::KeyService(ks) = &x.key {
            let access = if x.read_only {
                Access::ReadShared
            } else {
                Access::WriteExclusive
            };
            match super::keyservice::unlock(&o.header, &o.header_path, &lh, x.key_slot, ks, access)
            {
                Ok(k) => via_service = k,
                Err(failures) => {
                    let msg = format!("unlock through the key service failed:\n  {failures}");
                    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        return Err(in_export(named, x, CliError::KeyService(msg)));
                    }
                    eprintln!("{msg}\nFalling back to the passphrase.");
                }
            }
        }
        let key = match via_service {
            Some(k) => k,
            None => unlock_with_tries(&x.key, &x.image, Prompt::Unlock(&x.image), |pass| {
                try_unlock(&o.header, &o.header_path, &lh, pass, x.key_slot)
            })
            .map_err(|e| in_export(named, x, e))?,
        };
        let vol = Volume::new(o.data, &x.image, &lh, key, x.read_only)
            .map_err(|e| in_export(named, x, e))?
            .with_discard(x.discard);
        warn_discard(&lh, x.discard);
        tracing::info!(
            image = %x.image.display(),
            size = vol.size(),
            sector_size = vol.sector_size(),
            keyslot = vol.keyslot(),
            export = %x.name,
            read_only = x.read_only,
            discard = %x.discard,
            tls = %tls,
            "volume unlocked"
        );
        let config = ExportConfig {
            name: x.name.clone(),
            description: Some(export_description(x.description.as_deref())),
            read_only: x.read_only,
        };
        vols.push((config, Arc::new(vol)));
    }
    Ok(vols)
}

/// Say what the discard policy means for this volume: passdown leaks usage; a persistent
/// `allow-discards` flag in the header is not honoured without `--discard passdown`.
fn warn_discard(lh: &volume::LoadedHeader, discard: Discard) {
    let flagged = lh.allow_discards();
    match discard {
        Discard::Passdown => tracing::warn!(
            "--discard passdown: TRIM punches holes in the image file, which show which parts \
             of the volume are unused. cryptsetup: \"{}\"",
            CRYPTSETUP_DISCARD_WARNING
        ),
        Discard::Ignore if flagged => tracing::info!(
            "the header has the persistent flag allow-discards; TRIM is still ignored \
             (use --discard passdown to pass discards down)"
        ),
        Discard::Ignore => {}
    }
}

fn run_server(
    listeners: Vec<Listen>,
    vols: Vec<(ExportConfig, Arc<Volume>)>,
    options: ServerOptions,
    banner: Option<String>,
    mut ready: super::daemon::Readiness,
) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
    let exports: Vec<(ExportConfig, Arc<dyn BlockExport>)> = vols
        .iter()
        .map(|(c, v)| (c.clone(), crate::export::VolumeExport::shared(v.clone())))
        .collect();
    let result = rt.block_on(async {
        // Polled first once every listener is bound (nbd::serve's contract).
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            if let Some(b) = &banner {
                println!("{b}");
            }
            // --fork: the parent exits 0 now.
            ready.ready();
            // SIGHUP too: a closed terminal stops the server the same clean way (flush, keys
            // wiped, pid file and socket removed) instead of killing it.
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                std::future::pending::<()>().await;
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            tracing::info!("signal received: finishing in-flight requests");
        };
        nbd::serve(listeners, exports, options, shutdown).await
    });
    rt.shutdown_background();
    result?;
    // Every session has ended; the last reference wipes the keys (AES key schedules and the
    // volume key are zeroized on drop).
    let mut all_wiped = true;
    for (config, vol) in vols {
        match Arc::try_unwrap(vol) {
            Ok(vol) => {
                vol.flush()?;
                drop(vol);
            }
            Err(_) => {
                all_wiped = false;
                tracing::warn!(export = %config.name, "a stalled request still held the volume at exit");
            }
        }
    }
    if all_wiped {
        tracing::info!("stopped; keys wiped");
    }
    Ok(())
}

/// Build `serve`'s exports from its flags: every name given to --key-file, --recovery-key and
/// --read-only=NAME must be an export, and at most once per flag.
pub fn serve_exports(
    exports: Vec<(String, PathBuf)>,
    header: Vec<(String, PathBuf)>,
    key_file: Vec<(String, PathBuf)>,
    recovery_key: Vec<String>,
    read_only: Vec<String>,
    discard: Vec<String>,
) -> Result<Vec<ImageExport>, CliError> {
    let mut out: Vec<ImageExport> = Vec::with_capacity(exports.len());
    for (name, image) in exports {
        if out.iter().any(|x| x.name == name) {
            return Err(CliError::Usage(format!("export {name} is given twice")));
        }
        out.push(ImageExport {
            name,
            image,
            header: None,
            key: KeySource::Prompt,
            key_slot: None,
            read_only: false,
            discard: Discard::Ignore,
            description: None,
        });
    }
    let find = |out: &[ImageExport], name: &str, flag: &str| {
        let names = || {
            out.iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match out.iter().position(|x| x.name == name) {
            Some(i) => Ok(i),
            None => Err(CliError::Usage(format!(
                "{flag} names export {name:?}, which is not among the exports ({})",
                names()
            ))),
        }
    };
    for (name, file) in header {
        let i = find(&out, &name, "--header")?;
        if out[i].header.replace(file).is_some() {
            return Err(CliError::Usage(format!(
                "--header is given twice for export {name}"
            )));
        }
    }
    for (name, file) in key_file {
        let i = find(&out, &name, "--key-file")?;
        if let KeySource::KeyFile(_) = std::mem::replace(&mut out[i].key, KeySource::KeyFile(file))
        {
            return Err(CliError::Usage(format!(
                "--key-file is given twice for export {name}"
            )));
        }
    }
    for spec in recovery_key {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), Some(PathBuf::from(f))),
            None => (spec, None),
        };
        let i = find(&out, &name, "--recovery-key")?;
        if let KeySource::KeyFile(_) = out[i].key {
            return Err(CliError::Usage(format!(
                "export {name} has both --key-file and --recovery-key"
            )));
        }
        if let KeySource::Recovery(_) =
            std::mem::replace(&mut out[i].key, KeySource::Recovery(file))
        {
            return Err(CliError::Usage(format!(
                "--recovery-key is given twice for export {name}"
            )));
        }
    }
    for name in read_only {
        if name.is_empty() {
            out.iter_mut().for_each(|x| x.read_only = true);
        } else {
            let i = find(&out, &name, "--read-only")?;
            out[i].read_only = true;
        }
    }
    // `--discard POLICY` sets the default of every export (given once at most);
    // `--discard NAME=POLICY` overrides it for NAME (once per name), whatever the order.
    let mut all: Option<Discard> = None;
    let mut named: Vec<(usize, Discard)> = Vec::new();
    for spec in discard {
        let (name, policy) = match spec.split_once('=') {
            Some((n, p)) => (Some(n), p),
            None => (None, spec.as_str()),
        };
        let policy = match DiscardArg::from_str(policy, false) {
            Ok(p) => p.policy(),
            Err(_) => {
                return Err(CliError::Usage(format!(
                    "--discard {spec}: the policy is ignore or passdown"
                )))
            }
        };
        match name {
            None if all.is_some() => {
                return Err(CliError::Usage(
                    "--discard POLICY (for every export) is given twice".into(),
                ))
            }
            None => all = Some(policy),
            Some(name) => {
                let i = find(&out, name, "--discard")?;
                if named.iter().any(|(j, _)| *j == i) {
                    return Err(CliError::Usage(format!(
                        "--discard is given twice for export {name}"
                    )));
                }
                named.push((i, policy));
            }
        }
    }
    if let Some(policy) = all {
        out.iter_mut().for_each(|x| x.discard = policy);
    }
    for (i, policy) in named {
        out[i].discard = policy;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{
        export_description, first_conflict, parse_named_text, serve_exports, set_description,
        stdin_readers, ImageExport,
    };

    #[test]
    fn one_image_twice_conflicts_unless_both_exports_are_read_only() {
        let (a, b) = (Some((1, 10)), Some((1, 11)));
        assert_eq!(
            first_conflict(&[a, b, a], &[true, true, false]),
            Some((0, 2))
        );
        assert_eq!(
            first_conflict(&[a, b, a], &[false, true, true]),
            Some((0, 2))
        );
        assert_eq!(first_conflict(&[a, b, a], &[false, true, false]), None);
        assert_eq!(
            first_conflict(&[a, b, b], &[false, false, true]),
            Some((1, 2))
        );
        assert_eq!(
            first_conflict(&[None, None], &[true, true]),
            None,
            "unknown: left to open"
        );
        assert_eq!(first_conflict(&[a], &[true]), None);
    }
    use crate::cli::service_args::ServiceIdentity;
    use crate::cli::unlock::KeySource;
    use crate::volume::Discard;
    use std::path::PathBuf;

    #[test]
    fn descriptions_name_no_server_path_unless_given() {
        assert_eq!(export_description(None), "nbdcrypt LUKS2 volume");
        assert_eq!(export_description(Some("backup disk")), "backup disk");
        let mut exports = serve_exports(
            vec![
                ("a".into(), "/srv/secret/a.img".into()),
                ("b".into(), "b.img".into()),
            ],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        )
        .unwrap();
        set_description(&mut exports, "b", "second".into()).unwrap();
        assert!(set_description(&mut exports, "b", "again".into()).is_err());
        assert!(set_description(&mut exports, "c", "none".into()).is_err());
        assert!(set_description(&mut exports, "a", "x".repeat(4097)).is_err());
        let described: Vec<String> = exports
            .iter()
            .map(|x| export_description(x.description.as_deref()))
            .collect();
        assert_eq!(described, ["nbdcrypt LUKS2 volume", "second"]);
        assert_eq!(
            parse_named_text("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert_eq!(parse_named_text("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_named_text("=x").is_err());
    }

    /// `serve --discard`: a `NAME=POLICY` beats the global `POLICY` in either order; a repeat
    /// of either kind is refused.
    #[test]
    fn serve_discard_per_export_beats_the_default_in_any_order() {
        let exports = || {
            vec![
                ("a".to_string(), PathBuf::from("a.img")),
                ("b".to_string(), PathBuf::from("b.img")),
            ]
        };
        let run = |flags: &[&str]| {
            serve_exports(
                exports(),
                vec![],
                vec![],
                vec![],
                vec![],
                flags.iter().map(|s| s.to_string()).collect(),
            )
            .map(|v| v.iter().map(|x| x.discard).collect::<Vec<_>>())
        };
        let (i, p) = (Discard::Ignore, Discard::Passdown);
        assert_eq!(run(&[]).unwrap(), [i, i]);
        assert_eq!(run(&["b=ignore", "passdown"]).unwrap(), [p, i]);
        assert_eq!(run(&["passdown", "b=ignore"]).unwrap(), [p, i]);
        assert_eq!(run(&["b=passdown", "ignore"]).unwrap(), [i, p]);
        assert!(run(&["a=passdown", "a=ignore"]).is_err());
        assert!(run(&["passdown", "ignore"]).is_err());
        assert!(run(&["c=passdown"]).is_err());
        assert!(run(&["a=sometimes"]).is_err());
    }

    /// `serve --key-file` and `--recovery-key`: one key source per export, the prompt without
    /// either; both for one export, or either twice, is refused with the flag's message.
    #[test]
    fn serve_key_sources_one_per_export() {
        let exports = || {
            ["a", "b", "c"]
                .iter()
                .map(|n| (n.to_string(), PathBuf::from(format!("{n}.img"))))
                .collect::<Vec<_>>()
        };
        let named = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(n, f)| (n.to_string(), PathBuf::from(f)))
                .collect::<Vec<_>>()
        };
        let run = |keys: &[(&str, &str)], recovery: &[&str]| {
            serve_exports(
                exports(),
                vec![],
                named(keys),
                recovery.iter().map(|s| s.to_string()).collect(),
                vec![],
                vec![],
            )
            .map(|v| v.into_iter().map(|x| x.key).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
        };
        let got = run(&[("a", "a.key")], &["b=b.rk", "c"]).unwrap();
        assert!(matches!(&got[0], KeySource::KeyFile(f) if f == &PathBuf::from("a.key")));
        assert!(matches!(&got[1], KeySource::Recovery(Some(f)) if f == &PathBuf::from("b.rk")));
        assert!(matches!(&got[2], KeySource::Recovery(None)));
        let got = run(&[], &[]).unwrap();
        assert!(got.iter().all(|k| matches!(k, KeySource::Prompt)));
        assert_eq!(
            run(&[("a", "k")], &["a"]).unwrap_err(),
            "export a has both --key-file and --recovery-key"
        );
        assert_eq!(
            run(&[("a", "k"), ("a", "k2")], &[]).unwrap_err(),
            "--key-file is given twice for export a"
        );
        assert_eq!(
            run(&[], &["b", "b=f"]).unwrap_err(),
            "--recovery-key is given twice for export b"
        );
        assert!(run(&[("d", "k")], &[]).is_err());
    }

    /// Who reads stdin: a `-` key file (or recovery file) always; the prompt and a recovery
    /// key without a file only without a terminal; the key service only without a terminal
    /// and without a token in the header.
    #[test]
    fn stdin_readers_by_key_source() {
        let service = ServiceIdentity {
            identity: crate::keyservice::client::Identity {
                cert: "c".into(),
                key: "k".into(),
                ca: "ca".into(),
            },
            timeout: std::time::Duration::from_secs(1),
        };
        let keys = [
            ("file", KeySource::KeyFile("k".into())),
            ("dash", KeySource::KeyFile("-".into())),
            ("rdash", KeySource::Recovery(Some("-".into()))),
            ("rfile", KeySource::Recovery(Some("r".into()))),
            ("rprompt", KeySource::Recovery(None)),
            ("prompt", KeySource::Prompt),
            ("token", KeySource::KeyService(service.clone())),
            ("notoken", KeySource::KeyService(service)),
        ];
        let exports: Vec<ImageExport> = keys
            .into_iter()
            .map(|(name, key)| ImageExport {
                name: name.into(),
                image: PathBuf::from(format!("{name}.img")),
                header: None,
                key,
                key_slot: None,
                read_only: false,
                discard: Discard::Ignore,
                description: None,
            })
            .collect();
        let has_token = |x: &ImageExport| x.name == "token";
        assert_eq!(stdin_readers(&exports, true, has_token), ["dash", "rdash"]);
        assert_eq!(
            stdin_readers(&exports, false, has_token),
            ["dash", "rdash", "rprompt", "prompt", "notoken"]
        );
    }
}
