//! `nbdcrypt open` and `nbdcrypt demo`: unlock a volume and serve it over NBD until SIGINT or
//! SIGTERM, then finish in-flight requests, flush, wipe the keys and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::nbd::{self, ExportConfig, Listen};
use crate::volume::{
    self, Access, Discard, FormatOptions, KdfChoice, KdfKind, Volume, VolumeError,
};

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
    /// `--discard`.
    pub discard: Discard,
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
        discard,
    } = args;
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
    let vol = Volume::new(file, &image, &lh, key, read_only)?.with_discard(discard);
    warn_discard(&lh, discard);
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
        discard = ?discard,
        "volume unlocked"
    );
    let config = ExportConfig {
        name,
        description: Some(format!("nbdcrypt LUKS2 volume {}", image.display())),
        read_only,
    };
    run_server(listeners, Arc::new(vol), config, banner)
}

/// Say what the discard policy means for this volume: passdown leaks usage; a persistent
/// `allow-discards` flag in the header is not honoured without `--discard passdown`.
fn warn_discard(lh: &volume::LoadedHeader, discard: Discard) {
    let flagged = lh
        .metadata
        .config
        .flags
        .iter()
        .flatten()
        .any(|f| f == "allow-discards");
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
    vol: Arc<Volume>,
    config: ExportConfig,
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
        nbd::serve(listeners, vol.clone(), config, shutdown).await
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
/// and `DIR/demo.key` once, then serve it on `listen` as export `demo` with discard policy
/// `discard`, printing how to attach it once it is listening.
pub fn demo(dir: &Path, listen: SocketAddr, discard: Discard) -> Result<(), CliError> {
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
    let banner = format!(
        "Serving {img} as NBD export 'demo' on {listen}. Attach it with:\n  \
         nbdinfo {uri}\n  \
         qemu-img info -f raw {uri}\n  \
         sudo modprobe nbd && sudo nbd-client {ip} {port} /dev/nbd0 -N demo   # then mkfs.ext4 /dev/nbd0\n\
         While it is served, cryptsetup can read the header too: cryptsetup luksDump {img}\n\
         Stop with Ctrl-C.",
        img = image.display(),
        ip = listen.ip(),
        port = listen.port(),
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
            discard,
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
