//! `nbdcrypt demo`: the quick start. Creates (once) a small volume and its generated key file
//! in a directory and serves it on 127.0.0.1:10809, printing how to attach it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::nbd;
use crate::volume::{self, Discard, FormatOptions, KdfChoice, KdfKind, VolumeError};

use super::args::{DiscardArg, DISCARD_LONG_HELP};
use super::error::CliError;
use super::passphrase::{read_passphrase, Prompt};
use super::serve::{serve_with, ImageExport};
use super::server_args::{BoundsFlags, ServerArgs, TlsArgs};
use super::unlock::KeySource;

/// `nbdcrypt demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo image and key live.
    #[arg(long, default_value = "demo")]
    dir: PathBuf,
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:10809")]
    listen: std::net::SocketAddr,
    /// What TRIM does: ignore (default) or passdown (punches holes: leaks usage; see --help).
    #[arg(long, value_enum, value_name = "POLICY", default_value = "ignore", long_help = DISCARD_LONG_HELP)]
    discard: DiscardArg,
    #[command(flatten)]
    bounds: BoundsFlags,
    #[command(flatten)]
    tls: TlsArgs,
}

impl DemoArgs {
    /// Runs `demo`.
    pub fn run(self) -> Result<(), CliError> {
        demo(
            &self.dir,
            self.listen,
            self.discard.policy(),
            self.bounds,
            self.tls,
        )
    }
}

/// Quick start: create `DIR/demo.img` (64 MiB file, 48 MiB volume, Argon2id with modest cost)
/// and `DIR/demo.key` once, then serve it on `listen` as export `demo` with discard policy
/// `discard` (and `tls` as `open` takes it), printing how to attach it once it is listening.
fn demo(
    dir: &Path,
    listen: SocketAddr,
    discard: Discard,
    bounds: BoundsFlags,
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
            key: KeySource::KeyFile(key),
            key_slot: None,
            read_only: false,
            discard,
            description: None,
        }],
        ServerArgs {
            listen: vec![listen],
            socket: vec![],
            pid_file: None,
            max_connections: nbd::DEFAULT_MAX_CONNECTIONS,
            handshake_limit: nbd::DEFAULT_HANDSHAKE_LIMIT.as_secs(),
            inline_limit: crate::export::VOLUME_INLINE_LIMIT,
            bounds,
            tls,
            fork: false,
        },
        Some(banner),
        false,
    )
}

/// Creates `path` (new, 0600, never through a symlink) holding `data`.
fn write_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    nbdcrypt_luks2::fsutil::write_new(path, data, 0o600)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", path.display())))
}
