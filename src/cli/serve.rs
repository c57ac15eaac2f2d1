//! `nbdcrypt open` and `nbdcrypt demo`: unlock a volume and serve it over NBD until SIGINT or
//! SIGTERM, then finish in-flight requests, flush, wipe the keys and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::Passphrase;
use crate::nbd::{self, ExportConfig, Listen};
use crate::volume::{self, FormatOptions, KdfChoice, KdfKind, Volume};

use super::CliError;

/// What `open` serves, where.
pub struct ServeArgs {
    pub image: PathBuf,
    pub passphrase: Passphrase,
    pub key_slot: Option<u32>,
    pub listen: Vec<SocketAddr>,
    pub socket: Vec<PathBuf>,
    pub export_name: Option<String>,
    pub read_only: bool,
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

/// Unlock and serve until a signal; see the module docs.
pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    let ServeArgs {
        image,
        passphrase,
        key_slot,
        mut listen,
        socket,
        export_name,
        read_only,
    } = args;
    let (vol, lh) = Volume::open(&image, passphrase.expose(), key_slot, read_only)?;
    drop(passphrase);
    for w in &lh.warnings {
        eprintln!("warning: {w}");
    }
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
        "volume unlocked"
    );
    let config = ExportConfig {
        name,
        description: Some(format!("nbdcrypt LUKS2 volume {}", image.display())),
        read_only,
    };
    run_server(listeners, Arc::new(vol), config)
}

fn run_server(
    listeners: Vec<Listen>,
    vol: Arc<Volume>,
    config: ExportConfig,
) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(async move {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
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
        nbd::serve(listeners, vol.clone(), config, shutdown).await?;
        // All sessions have ended; flush once more ourselves and drop the last reference,
        // which wipes the keys.
        vol.flush()?;
        drop(vol);
        Ok::<(), CliError>(())
    });
    rt.shutdown_background();
    result?;
    tracing::info!("stopped; keys wiped");
    Ok(())
}

/// Quick start: create `DIR/demo.img` (64 MiB, Argon2id with modest cost) and `DIR/demo.key`
/// once, then serve it on `listen` as export `demo`, printing how to attach it.
pub fn demo(dir: &Path, listen: SocketAddr) -> Result<(), CliError> {
    let image = dir.join("demo.img");
    let key = dir.join("demo.key");
    if !image.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
        if !key.exists() {
            let pass: String = crate::crypto::random_bytes(24)
                .map_err(crate::volume::VolumeError::from)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            write_private(&key, pass.as_bytes())?;
        }
        let pass = read_key(&key)?;
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
    let pass = read_key(&key)?;
    let uri = format!("nbd://{listen}/demo");
    println!(
        "Serving {} as NBD export 'demo' on {listen}. Attach it with:",
        image.display()
    );
    println!("  nbdinfo {uri}");
    println!("  qemu-img info -f raw {uri}");
    println!(
        "  sudo modprobe nbd && sudo nbd-client {} {} /dev/nbd0 -N demo   # then mkfs.ext4 /dev/nbd0",
        listen.ip(),
        listen.port()
    );
    println!("The LUKS2 image opens with cryptsetup too: cryptsetup open --test-passphrase --key-file {} {}", key.display(), image.display());
    println!("Stop with Ctrl-C.");
    serve(ServeArgs {
        image,
        passphrase: pass,
        key_slot: None,
        listen: vec![listen],
        socket: vec![],
        export_name: Some("demo".into()),
        read_only: false,
    })
}

fn read_key(path: &Path) -> Result<Passphrase, CliError> {
    std::fs::read(path)
        .map(Passphrase::new)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
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
