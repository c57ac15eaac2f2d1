//! `nbdcrypt open` and `nbdcrypt close`: one volume served over NBD (`serve.rs`), or attached
//! as a kernel block device with `--connect` and detached with `close` (`connect.rs`).

use std::path::PathBuf;

use super::args::{DiscardArg, HeaderArg, KeyArgs, DISCARD_LONG_HELP};
use super::error::CliError;
use super::serve::{self, ImageExport};
use super::server_args::ServerFlags;
use super::service_args::ServiceIdentityArgs;
use super::unlock::KeySource;

/// `nbdcrypt open`.
#[derive(clap::Args)]
pub struct OpenArgs {
    /// Image file.
    #[arg(required_unless_present = "disconnect")]
    image: Option<PathBuf>,
    /// Attach the volume to the kernel NBD device DEVICE (/dev/nbdN; needs root and the nbd
    /// module), with the volume's sector size as block size, and stay in the background
    /// serving it until `nbdcrypt close DEVICE`. No TCP or Unix socket is opened.
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["listen", "socket", "tls", "tls_cert", "tls_key", "tls_ca", "disconnect"])]
    connect: Option<PathBuf>,
    /// With --connect: stay in the foreground (default: go to the background once the
    /// device is connected).
    #[arg(long, requires = "connect", conflicts_with = "fork")]
    foreground: bool,
    /// Disconnect DEVICE (as `nbdcrypt close DEVICE`) instead of opening anything.
    #[arg(long, value_name = "DEVICE")]
    disconnect: Option<PathBuf>,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    server: ServerFlags,
    /// Export name (default: the image file's stem); the default export "" works too.
    #[arg(long, value_name = "NAME")]
    export_name: Option<String>,
    /// The export's description for clients (`nbdinfo --list`); default "nbdcrypt LUKS2
    /// volume", which names no server path.
    #[arg(long, value_name = "TEXT")]
    export_description: Option<String>,
    /// Serve read-only: writes fail with EPERM.
    #[arg(long)]
    read_only: bool,
    /// What TRIM does: ignore (default) or passdown (punches holes: leaks usage; see --help).
    #[arg(long, value_enum, value_name = "POLICY", default_value = "ignore", long_help = DISCARD_LONG_HELP)]
    discard: DiscardArg,
    /// Without --key-file or --recovery-key, a volume with an nbdcrypt-keyservice token is
    /// unlocked through the key service first (a terminal prompt if that fails, else exit 2).
    #[command(flatten)]
    service: ServiceIdentityArgs,
}

impl OpenArgs {
    /// Runs `open`: `--disconnect`, `--connect`, or serving on sockets. Without a key flag the
    /// volume is unlocked through the key service first.
    pub fn run(self) -> Result<(), CliError> {
        if let Some(device) = self.disconnect {
            return super::connect::close(&device);
        }
        let image = self
            .image
            .expect("clap requires IMAGE without --disconnect");
        if let Some(text) = &self.export_description {
            serve::check_description(text)?;
        }
        let identity = self.service.identity()?;
        let key = match self.key.unlock.source() {
            KeySource::Prompt => KeySource::KeyService(identity),
            other => other,
        };
        let export = ImageExport {
            name: self
                .export_name
                .unwrap_or_else(|| serve::default_export_name(&image)),
            image,
            header: self.header.header,
            key,
            key_slot: self.key.key_slot,
            read_only: self.read_only,
            discard: self.discard.policy(),
            description: self.export_description,
        };
        match self.connect {
            Some(device) => super::connect::open_connect(
                export,
                &device,
                self.foreground,
                self.server.pid_file,
                self.server.inline_limit,
            ),
            None => serve::open(export, self.server.args()),
        }
    }
}

/// `nbdcrypt close`.
#[derive(clap::Args)]
pub struct CloseArgs {
    /// The device, e.g. /dev/nbd0.
    device: PathBuf,
}

impl CloseArgs {
    /// Runs `close`.
    pub fn run(self) -> Result<(), CliError> {
        super::connect::close(&self.device)
    }
}
