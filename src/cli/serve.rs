//! `nbdcrypt open`, `nbdcrypt serve` and `nbdcrypt demo`: unlock one or several volumes and
//! serve them over NBD until SIGINT or SIGTERM, then finish in-flight requests, flush, wipe
//! the keys and exit 0.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::nbd::{
    self, BlockExport, ExportConfig, Listen, ServerOptions, TlsConfig, TlsFiles, TlsMode,
};
use crate::volume::{
    self, Access, Discard, FormatOptions, KdfChoice, KdfKind, Volume, VolumeError,
};

use super::passphrase::{read_passphrase, unlock_with_tries, Prompt, Source};
use super::CliError;

/// One image to serve under a name.
pub struct ImageExport {
    /// Export name (`open`: `--export-name` or the image's stem; `serve`: `--export NAME=…`).
    pub name: String,
    /// Image file.
    pub image: PathBuf,
    /// `--header`: a detached LUKS2 header file; `image` then holds only the data.
    pub header: Option<PathBuf>,
    /// `--key-file`; ignored when `recovery` is set. `None`: the terminal prompt (or one line
    /// of a non-terminal stdin).
    pub key_file: Option<PathBuf>,
    /// `--recovery-key [FILE]`.
    pub recovery: Option<Option<PathBuf>>,
    /// `--key-slot`.
    pub key_slot: Option<u32>,
    /// Serve read-only: writes fail with `EPERM`, the image is locked shared.
    pub read_only: bool,
    /// What TRIM does (`--discard`).
    pub discard: Discard,
    /// Unlock through the key service when the header has an `nbdcrypt-keyservice` token and
    /// neither `key_file` nor `recovery` is given (`open` and `serve`; `None` for `demo`).
    pub key_service: Option<super::keyservice::ServiceIdentity>,
}

/// Where and how to serve (shared by `open` and `serve`).
pub struct ServerArgs {
    /// `--listen` addresses.
    pub listen: Vec<SocketAddr>,
    /// `--socket` paths.
    pub socket: Vec<PathBuf>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--max-connections` (0 = no limit).
    pub max_connections: usize,
    /// `--handshake-limit` in seconds (0 = no limit).
    pub handshake_limit: u64,
    /// `--inline-limit` in bytes (0 = nothing served inline).
    pub inline_limit: u32,
    /// `--tls`, `--tls-cert`, `--tls-key`, `--tls-ca`.
    pub tls: TlsArgs,
    /// `--fork`: run in the background once listening ([`super::daemon`]).
    pub fork: bool,
}

/// The TLS flags of `open`, `serve` and `demo`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// TLS mode: off (plain text only), on (TLS offered, plain text allowed), require (clients
    /// must STARTTLS before anything else). Default: require when --tls-cert/--tls-key are
    /// given, else off.
    #[arg(long, value_name = "MODE", value_parser = parse_tls_mode)]
    pub tls: Option<TlsMode>,
    /// Server certificate (PEM, leaf first, then any intermediates); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, RSA or EC, as openssl writes them).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM): clients must present a certificate signed by one of them.
    /// Without it, no client certificate is asked for.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

fn parse_tls_mode(s: &str) -> Result<TlsMode, String> {
    s.parse()
}

impl TlsArgs {
    /// The mode these flags select, and the files when it is not off.
    ///
    /// Rules (as qemu-nbd, where giving TLS credentials means TLS is required): no flag → off;
    /// `--tls-cert` + `--tls-key` without `--tls` → require; `--tls on|require` needs both
    /// files; `--tls off` with any file, one file of the pair alone, or `--tls-ca` without the
    /// pair is a usage error rather than a silent plain-text server.
    fn resolve(&self) -> Result<Option<(TlsMode, TlsFiles)>, CliError> {
        let any_file = self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some();
        let mode = match (self.tls, any_file) {
            (Some(TlsMode::Off), true) => {
                return Err(CliError::Usage(
                    "--tls off contradicts --tls-cert/--tls-key/--tls-ca: drop them, or use --tls on or --tls require".into(),
                ))
            }
            (Some(TlsMode::Off), false) | (None, false) => return Ok(None),
            (Some(m), _) => m,
            (None, true) => TlsMode::Require,
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some((
                mode,
                TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: self.tls_ca.clone(),
                },
            ))),
            (cert, key) => {
                let missing = match (cert, key) {
                    (None, None) => "--tls-cert FILE and --tls-key FILE",
                    (None, _) => "--tls-cert FILE",
                    _ => "--tls-key FILE",
                };
                Err(CliError::Usage(format!("TLS ({mode}) needs {missing}")))
            }
        }
    }

    /// Read the files and build the server's TLS configuration ([`TlsConfig::off`] without
    /// TLS flags). Errors: usage errors of [`TlsArgs::resolve`], [`crate::nbd::TlsError`].
    fn load(&self) -> Result<TlsConfig, CliError> {
        match self.resolve()? {
            None => Ok(TlsConfig::off()),
            Some((mode, files)) => Ok(TlsConfig::from_files(mode, &files)?),
        }
    }
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
    let tty = std::io::stdin().is_terminal();
    let readers: Vec<&str> = exports
        .iter()
        .filter(|x| {
            let file = match &x.recovery {
                Some(f) => f.as_deref(),
                None => x.key_file.as_deref(),
            };
            match file {
                Some(f) => f == Path::new("-"),
                None => !tty && !super::keyservice::has_service_token(x),
            }
        })
        .map(|x| x.name.as_str())
        .collect();
    if readers.len() > 1 {
        return Err(CliError::Usage(format!(
            "exports {} would all read their passphrase from stdin; give each a --key-file NAME=FILE (or run at a terminal to be prompted for each)",
            readers.join(", ")
        )));
    }
    Ok(())
}

/// Open, unlock and serve `exports`, printing `banner` once the listeners are up. `named`:
/// errors name the export (`serve`).
fn serve_with(
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
    // Before any thread exists and before the images are locked.
    let ready = super::daemon::fork_if(fork)?;
    let vols = unlock_all(&exports, named, tls.mode())?;
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
    let options = ServerOptions {
        max_connections,
        pid_file,
        tls,
        handshake_limit: (handshake_limit > 0).then(|| Duration::from_secs(handshake_limit)),
        inline_limit: Some(inline_limit),
    };
    run_server(listeners, vols, options, banner, ready)
}

/// Open and lock every image (a missing, busy or invalid one is refused before any passphrase
/// is asked for), then unlock them in turn; `named`: errors name the export (`serve`). `tls`
/// only goes into the log line. Returns each export's configuration and volume.
pub(super) fn unlock_all(
    exports: &[ImageExport],
    named: bool,
    tls: TlsMode,
) -> Result<Vec<(ExportConfig, Arc<Volume>)>, CliError> {
    let mut opened = Vec::with_capacity(exports.len());
    for x in exports {
        let access = if x.read_only {
            Access::ReadShared
        } else {
            Access::WriteExclusive
        };
        let (o, lh) = super::open_loaded(&x.image, x.header.as_deref(), access)
            .map_err(|e| in_export(named, x, e))?;
        opened.push((o, lh));
    }
    let mut vols: Vec<(ExportConfig, Arc<Volume>)> = Vec::with_capacity(exports.len());
    for (x, (o, lh)) in exports.iter().zip(opened) {
        let source = match &x.recovery {
            Some(f) => Source::Recovery(f.as_deref()),
            None => Source::Passphrase(x.key_file.as_deref()),
        };
        let mut via_service = None;
        if let (Some(ks), None, None) = (&x.key_service, &x.key_file, &x.recovery) {
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
            None => unlock_with_tries(source, &x.image, |pass| {
                super::try_unlock(&o.header, &o.header_path, &lh, pass, x.key_slot)
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
            discard = ?x.discard,
            tls = %tls,
            "volume unlocked"
        );
        let config = ExportConfig {
            name: x.name.clone(),
            description: Some(format!("nbdcrypt LUKS2 volume {}", x.image.display())),
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
            super::CRYPTSETUP_DISCARD_WARNING
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

/// Quick start: create `DIR/demo.img` (64 MiB file, 48 MiB volume, Argon2id with modest cost)
/// and `DIR/demo.key` once, then serve it on `listen` as export `demo` with discard policy
/// `discard` (and `tls` as `open` takes it), printing how to attach it once it is listening.
pub fn demo(
    dir: &Path,
    listen: SocketAddr,
    discard: Discard,
    tls: TlsArgs,
) -> Result<(), CliError> {
    let tls_mode = tls.resolve()?.map(|(m, _)| m);
    tls.load()?; // bad TLS files fail before the image is created (serve_with loads them again)
    let image = dir.join("demo.img");
    let key = dir.join("demo.key");
    if !image.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
        if !key.exists() {
            let pass = Zeroizing::new(
                crate::crypto::random_bytes(24)
                    .map_err(VolumeError::from)?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            );
            write_private(&key, pass.as_bytes())?;
        }
        let pass = read_passphrase(Some(&key), Prompt::Unlock(&image))?;
        let opts = FormatOptions {
            size: Some(64 << 20),
            sector_size: 512,
            kdf: KdfChoice {
                kind: KdfKind::Argon2id,
                iter_time_ms: 500,
                memory_kib: 64 << 10,
                parallel: 2,
                force_iterations: None,
            },
            label: Some("nbdcrypt-demo".into()),
            header: None,
        };
        eprintln!(
            "creating {} (key in {}) ...",
            image.display(),
            key.display()
        );
        volume::format(&image, &opts, pass.expose())?;
    }
    let uri = format!("nbd://{listen}/demo");
    let attach = match tls_mode {
        None => format!(
            "Attach it with:\n  \
             nbdinfo {uri}\n  \
             qemu-img info -f raw {uri}\n  \
             sudo modprobe nbd && sudo nbd-client {ip} {port} /dev/nbd0 -N demo   # then mkfs.ext4 /dev/nbd0",
            ip = listen.ip(),
            port = listen.port(),
        ),
        Some(mode) => format!(
            "TLS: {mode}. Attach it with (DIR holds ca-cert.pem, and client-cert.pem and \
             client-key.pem when --tls-ca is given):\n  \
             nbdinfo 'nbds://{listen}/demo?tls-certificates=DIR'\n  \
             qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir=DIR \
             --image-opts driver=nbd,host={ip},port={port},export=demo,tls-creds=tls0",
            ip = listen.ip(),
            port = listen.port(),
        ),
    };
    let banner = format!(
        "Serving {img} as NBD export 'demo' on {listen}. {attach}\n\
         While it is served, cryptsetup can read the header too: cryptsetup luksDump {img}\n\
         Stop with Ctrl-C.",
        img = image.display(),
    );
    serve_with(
        vec![ImageExport {
            name: "demo".into(),
            image,
            header: None,
            key_file: Some(key),
            recovery: None,
            key_slot: None,
            read_only: false,
            discard,
            key_service: None,
        }],
        ServerArgs {
            listen: vec![listen],
            socket: vec![],
            pid_file: None,
            max_connections: nbd::DEFAULT_MAX_CONNECTIONS,
            handshake_limit: nbd::DEFAULT_HANDSHAKE_LIMIT.as_secs(),
            inline_limit: crate::export::VOLUME_INLINE_LIMIT,
            tls,
            fork: false,
        },
        Some(banner),
        false,
    )
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(data)
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))
}
