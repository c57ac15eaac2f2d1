//! `nbdcrypt open` and `nbdcrypt demo`: unlock a volume and serve it over NBD until SIGINT or
//! SIGTERM, then finish in-flight requests, flush, wipe the keys and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::nbd::{self, ExportConfig, Listen, TlsConfig, TlsFiles, TlsMode};
use crate::volume::{self, Access, FormatOptions, KdfChoice, KdfKind, Volume, VolumeError};

use super::passphrase::{read_passphrase, unlock_with_tries, Prompt, Source};
use super::CliError;

/// What `open` serves, where.
pub struct ServeArgs {
    /// Image file.
    pub image: PathBuf,
    /// `--key-file`; ignored when `recovery` is set.
    pub key_file: Option<PathBuf>,
    /// `--recovery-key [FILE]`.
    pub recovery: Option<Option<PathBuf>>,
    /// `--key-slot`.
    pub key_slot: Option<u32>,
    /// `--listen` addresses.
    pub listen: Vec<SocketAddr>,
    /// `--socket` paths.
    pub socket: Vec<PathBuf>,
    /// `--export-name`.
    pub export_name: Option<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--tls`, `--tls-cert`, `--tls-key`, `--tls-ca`.
    pub tls: TlsArgs,
}

/// The TLS flags of `open` and `demo`.
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
fn default_export_name(image: &Path) -> String {
    image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vol".into())
}

/// Open the image (locks first, so a missing, busy or invalid image is refused before the
/// passphrase is asked for), unlock it and serve it until a signal.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    serve_with(args, None)
}

/// [`serve`], printing `banner` once the listeners are up.
fn serve_with(args: ServeArgs, banner: Option<String>) -> Result<(), CliError> {
    let ServeArgs {
        image,
        key_file,
        recovery,
        key_slot,
        mut listen,
        socket,
        export_name,
        read_only,
        tls,
    } = args;
    // TLS files first: a bad certificate is refused before the passphrase is asked for.
    let tls = tls.load()?;
    let access = if read_only {
        Access::ReadShared
    } else {
        Access::WriteExclusive
    };
    let file = volume::open_image(&image, access)?;
    let lh = volume::load_header(&file, &image)?;
    super::warn_all(&lh.warnings);
    let source = match &recovery {
        Some(f) => Source::Recovery(f.as_deref()),
        None => Source::Passphrase(key_file.as_deref()),
    };
    let key = unlock_with_tries(source, &image, |pass| {
        super::try_unlock(&file, &image, &lh, pass, key_slot)
    })?;
    let vol = Volume::new(file, &image, &lh, key, read_only)?;
    if listen.is_empty() && socket.is_empty() {
        listen.push(DEFAULT_LISTEN.parse().expect("valid default address"));
    }
    let mut listeners: Vec<Listen> = listen.into_iter().map(Listen::Tcp).collect();
    listeners.extend(socket.into_iter().map(Listen::Unix));
    let name = export_name.unwrap_or_else(|| default_export_name(&image));
    tracing::info!(
        image = %image.display(),
        size = vol.size(),
        sector_size = vol.sector_size(),
        keyslot = vol.keyslot(),
        export = %name,
        read_only,
        tls = %tls.mode(),
        "volume unlocked"
    );
    let config = ExportConfig {
        name,
        description: Some(format!("nbdcrypt LUKS2 volume {}", image.display())),
        read_only,
    };
    run_server(listeners, Arc::new(vol), config, tls, banner)
}

fn run_server(
    listeners: Vec<Listen>,
    vol: Arc<Volume>,
    config: ExportConfig,
    tls: TlsConfig,
    banner: Option<String>,
) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(async {
        // Polled first once every listener is bound (nbd::serve's contract).
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            if let Some(b) = &banner {
                println!("{b}");
            }
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                std::future::pending::<()>().await;
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("signal received: finishing in-flight requests");
        };
        nbd::serve(listeners, vol.clone(), config, tls, shutdown).await
    });
    rt.shutdown_background();
    result?;
    // Every session has ended; the last reference wipes the keys (AES key schedules and the
    // volume key are zeroized on drop).
    match Arc::try_unwrap(vol) {
        Ok(vol) => {
            vol.flush()?;
            drop(vol);
            tracing::info!("stopped; keys wiped");
        }
        Err(_) => tracing::warn!("stopped; a stalled request still held the volume at exit"),
    }
    Ok(())
}

/// Quick start: create `DIR/demo.img` (64 MiB file, 48 MiB volume, Argon2id with modest cost)
/// and `DIR/demo.key` once, then serve it on `listen` as export `demo` (with `tls` as `open`
/// takes it), printing how to attach it once it is listening.
pub fn demo(dir: &Path, listen: SocketAddr, tls: TlsArgs) -> Result<(), CliError> {
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
        ServeArgs {
            image,
            key_file: Some(key),
            recovery: None,
            key_slot: None,
            listen: vec![listen],
            socket: vec![],
            export_name: Some("demo".into()),
            read_only: false,
            tls,
        },
        Some(banner),
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
