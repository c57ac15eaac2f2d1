//! The `nbdcrypt` command line: format, dump, test-passphrase, open and serve (over NBD),
//! keyslot and header management, benchmark, demo.
//!
//! Exit codes (as cryptsetup's, `cryptsetup(8)` "RETURN CODES"): 0 success; 1 wrong parameters
//! or an invalid volume; 2 no key available with this passphrase; 3 out of memory; 4 wrong
//! device (image missing or unreadable); 5 device busy. Errors are one line on stderr, with a
//! hint line where one helps.

mod benchmark;
mod connect;
mod daemon;
mod docs;
mod dump;
mod escrow;
mod keyservice;
mod keyslots;
mod passphrase;
mod recover;
mod rewrap;
mod serve;
mod wipe;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::volume::{self, Access, FormatOptions, KdfChoice, KdfKind, VolumeError};
use passphrase::{read_passphrase, Prompt};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: wrong parameters, or not a valid (or supported) LUKS volume.
pub const EXIT_INVALID: i32 = 1;
/// Exit code: no keyslot opens with this passphrase.
pub const EXIT_NO_KEY: i32 = 2;
/// Exit code: out of memory.
pub const EXIT_NO_MEMORY: i32 = 3;
/// Exit code: wrong device (the image is missing or unreadable).
pub const EXIT_WRONG_DEVICE: i32 = 4;
/// Exit code: the image is in use by another process.
pub const EXIT_BUSY: i32 = 5;
/// Exit code: stopped by SIGINT or SIGTERM before finishing (`wipe`; 128 + SIGINT, as shells).
pub const EXIT_INTERRUPTED: i32 = 130;

/// A failure of a command, already classified for its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments (exit 1).
    #[error("{0}")]
    Usage(String),
    /// From the volume layer.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// From the NBD server.
    #[error(transparent)]
    Nbd(#[from] crate::nbd::NbdError),
    /// TLS certificate, key or CA files that cannot be used (exit 1).
    #[error(transparent)]
    Tls(#[from] crate::nbd::TlsError),
    /// The kernel NBD device of `open --connect` and `close` (exit 4 for a missing or wrong
    /// device, 5 for a busy one, else 1).
    #[error(transparent)]
    Kernel(#[from] crate::nbd::kernel::KernelError),
    /// Stopped by a signal before finishing; the text says how to resume (exit 130).
    #[error("{0}")]
    Interrupted(String),
    /// Unlock through the key service failed and there is no terminal to fall back to a
    /// passphrase prompt (exit 2, as no usable key); lists every endpoint's failure.
    #[error("{0}")]
    KeyService(String),
    /// An error with a hint that depends on the input (shown instead of the generic one).
    #[error("{0}")]
    Hinted(Box<CliError>, String),
    /// An error of one export of `serve`, naming it; exit code and hint are the inner error's.
    #[error("{}", export_message(name, image, source))]
    Export {
        /// Export name.
        name: String,
        /// Its image.
        image: PathBuf,
        /// What went wrong.
        source: Box<CliError>,
    },
}

/// `export NAME: ERROR`, with the image added when the error does not already name it.
fn export_message(name: &str, image: &Path, e: &CliError) -> String {
    let text = e.to_string();
    let img = image.display().to_string();
    if text.contains(&img) {
        format!("export {name}: {text}")
    } else {
        format!("export {name} ({img}): {text}")
    }
}

impl CliError {
    /// The documented exit code of this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Hinted(inner, _) | CliError::Export { source: inner, .. } => {
                inner.exit_code()
            }
            CliError::Usage(_) | CliError::Nbd(_) | CliError::Tls(_) => EXIT_INVALID,
            CliError::Kernel(k) => {
                use crate::nbd::kernel::KernelError as K;
                match k {
                    K::NoModule(_) | K::NotNbd(_) => EXIT_WRONG_DEVICE,
                    K::Busy { .. } => EXIT_BUSY,
                    K::NotConnected(_) | K::Call { .. } => EXIT_INVALID,
                }
            }
            CliError::Interrupted(_) => EXIT_INTERRUPTED,
            CliError::KeyService(_) => EXIT_NO_KEY,
            CliError::Volume(v) => match v {
                VolumeError::WrongPassphrase => EXIT_NO_KEY,
                VolumeError::OutOfMemory { .. } => EXIT_NO_MEMORY,
                VolumeError::Device { .. } => EXIT_WRONG_DEVICE,
                VolumeError::Busy { .. } => EXIT_BUSY,
                _ => EXIT_INVALID,
            },
        }
    }

    fn hint(&self) -> Option<&str> {
        match self {
            CliError::Hinted(_, h) => Some(h),
            CliError::Export { source, .. } => source.hint(),
            CliError::Volume(v) => match v {
                VolumeError::WrongPassphrase => {
                    Some("check the passphrase; a --key-file is used byte for byte, a trailing newline included")
                }
                VolumeError::NotLuks { .. } => Some("create a volume with `nbdcrypt format IMAGE`"),
                VolumeError::DetachedHeader { .. } => {
                    Some("a detached header needs its data file: nbdcrypt COMMAND DATA-FILE --header HEADER-FILE")
                }
                VolumeError::Corrupt { .. } => Some("restore a header backup, or run `cryptsetup repair` on a copy of the image"),
                VolumeError::Busy { .. } => Some("another nbdcrypt (or cryptsetup) has the image open; stop it first"),
                VolumeError::OutOfMemory { .. } => Some("free memory, or add a keyslot with a smaller --pbkdf-memory"),
                VolumeError::Update { fix, .. } => Some(fix),
                _ => None,
            },
            CliError::Kernel(crate::nbd::kernel::KernelError::Call { source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                Some("connecting and disconnecting NBD devices needs root (CAP_SYS_ADMIN)")
            }
            CliError::Tls(_) => Some(
                "--tls-cert, --tls-key and --tls-ca take PEM files as openssl writes them (see the README's TLS section)",
            ),
            _ => None,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "nbdcrypt",
    version,
    about = "LUKS2 volume images served as NBD block devices, in userspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse to unlock keyslots whose Argon2 memory cost exceeds this many KiB (default: half
    /// of RAM); such slots are skipped before anything is allocated.
    #[arg(long, global = true, value_name = "KIB")]
    pbkdf_memory_limit: Option<u64>,
    /// Log line format on stderr: text (default) or json (one JSON object per line, for log
    /// collectors). The level comes from NBDCRYPT_LOG (default info).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, fields, message).
    Json,
}

/// `--pbkdf-memory-limit`, set once at start.
static MEMORY_LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// [`volume::unlock`] with the command line's memory limit.
fn try_unlock(
    file: &std::fs::File,
    image: &Path,
    lh: &volume::LoadedHeader,
    passphrase: &[u8],
    keyslot: Option<u32>,
) -> Result<crate::volume::UnlockedKey, VolumeError> {
    let limit = MEMORY_LIMIT.get().copied().flatten();
    volume::unlock(file, image, lh, passphrase, keyslot, limit)
}

/// `--header FILE`: a detached LUKS2 header (`format-spec.md` §1.1).
#[derive(clap::Args)]
struct HeaderArg {
    /// Detached LUKS2 header file (as cryptsetup's --header): the header and keyslots are read
    /// from (and written to) FILE, and IMAGE holds only the encrypted data, from offset 0.
    #[arg(long, value_name = "FILE")]
    header: Option<PathBuf>,
}

/// Open `image` (with its detached `header`, if any) with the locks of `access` and read its
/// header, printing the header's warnings.
fn open_loaded(
    image: &Path,
    header: Option<&Path>,
    access: Access,
) -> Result<(volume::OpenedImage, volume::LoadedHeader), CliError> {
    let o = volume::OpenedImage::open(image, header, access)?;
    let lh = o.load()?;
    warn_all(&lh.warnings);
    Ok((o, lh))
}

#[derive(Clone, Copy, ValueEnum)]
enum PbkdfArg {
    Argon2id,
    Argon2i,
    Pbkdf2,
}

/// How an existing keyslot is opened: a passphrase, or a recovery key.
#[derive(clap::Args)]
struct Unlocker {
    /// Read the passphrase from FILE byte for byte (`-` = all of stdin). Without it: a terminal
    /// prompt, or one line of stdin.
    #[arg(long, short = 'd', value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Unlock with a recovery key instead of a passphrase: from FILE, or typed at the prompt.
    #[arg(long, value_name = "FILE", num_args = 0..=1, conflicts_with = "key_file")]
    recovery_key: Option<Option<PathBuf>>,
}

impl Unlocker {
    fn source(&self) -> passphrase::Source<'_> {
        match &self.recovery_key {
            Some(f) => passphrase::Source::Recovery(f.as_deref()),
            None => passphrase::Source::Passphrase(self.key_file.as_deref()),
        }
    }
}

#[derive(clap::Args)]
struct KeyArgs {
    #[command(flatten)]
    unlock: Unlocker,
    /// Try only this keyslot.
    #[arg(long, short = 'S', value_name = "N")]
    key_slot: Option<u32>,
}

/// How this host authenticates to the key service (files from `nbdcrypt-keyd host add` and
/// the service's `ca.pem`), and how long each endpoint may take.
#[derive(clap::Args)]
struct ServiceIdentityArgs {
    /// This host's client certificate (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbdcrypt/keyservice/host.pem"
    )]
    key_service_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbdcrypt/keyservice/host.key"
    )]
    key_service_key: PathBuf,
    #[command(flatten)]
    tls: ServiceTlsArgs,
}

/// Which CA the key service's certificate must chain to, and how long each endpoint may take:
/// for hosts ([`ServiceIdentityArgs`]) and for officers (`recover`).
#[derive(clap::Args)]
struct ServiceTlsArgs {
    /// The key service's CA certificate (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbdcrypt/keyservice/ca.pem"
    )]
    key_service_ca: PathBuf,
    /// Seconds each endpoint may take (connect, TLS, reply) before the next is tried.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    key_service_timeout: f64,
}

/// `--key-service-timeout SECONDS`, more than 0 and at most 3600.
fn service_timeout(secs: f64) -> Result<std::time::Duration, CliError> {
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(CliError::Usage(
            "--key-service-timeout takes seconds, more than 0 and at most 3600".into(),
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

impl ServiceIdentityArgs {
    fn identity(&self) -> Result<keyservice::ServiceIdentity, CliError> {
        Ok(keyservice::ServiceIdentity {
            identity: crate::keyservice::client::Identity {
                cert: self.key_service_cert.clone(),
                key: self.key_service_key.clone(),
                ca: self.tls.key_service_ca.clone(),
            },
            timeout: service_timeout(self.tls.key_service_timeout)?,
        })
    }

    fn args<'a>(&self, urls: &'a [String]) -> Result<keyservice::ServiceArgs<'a>, CliError> {
        let id = self.identity()?;
        Ok(keyservice::ServiceArgs {
            urls,
            identity: id.identity,
            timeout: id.timeout,
        })
    }
}

/// KDF cost of a new keyslot, with cryptsetup's flag names, units and defaults.
#[derive(clap::Args)]
struct KdfArgs {
    /// Password-based KDF of the new keyslot.
    #[arg(long, value_enum, default_value = "argon2id")]
    pbkdf: PbkdfArg,
    /// Benchmark the KDF to take this long to unlock, milliseconds.
    #[arg(long, short = 'i', value_name = "MS", default_value_t = 2000)]
    iter_time: u32,
    /// Argon2 memory cost in KiB (capped at half of RAM).
    #[arg(long, value_name = "KIB", default_value_t = 1 << 20)]
    pbkdf_memory: u32,
    /// Argon2 parallel lanes (1-4, at most the CPU count).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pbkdf_parallel: u32,
    /// PBKDF2 iterations or Argon2 time cost; skips the benchmark.
    #[arg(long, value_name = "N")]
    pbkdf_force_iterations: Option<u32>,
}

impl KdfArgs {
    fn choice(&self) -> KdfChoice {
        KdfChoice {
            kind: match self.pbkdf {
                PbkdfArg::Argon2id => KdfKind::Argon2id,
                PbkdfArg::Argon2i => KdfKind::Argon2i,
                PbkdfArg::Pbkdf2 => KdfKind::Pbkdf2,
            },
            iter_time_ms: self.iter_time,
            memory_kib: self.pbkdf_memory,
            parallel: self.pbkdf_parallel,
            force_iterations: self.pbkdf_force_iterations,
        }
    }
}

/// cryptsetup's warning on discards, word for word (`cryptsetup-open(8)` of cryptsetup 2.6,
/// `--allow-discards`), as a literal for `concat!`.
macro_rules! cryptsetup_discard_warning {
    () => {
        "This command can have a negative security impact because it can make \
         filesystem-level operations visible on the physical device. For example, information \
         leaking filesystem type, used space, etc. may be extractable from the physical device \
         if the discarded blocks can be located later. If in doubt, do not use it."
    };
}

/// cryptsetup's warning on discards; `dump`, `open` and `--help` repeat it where passdown
/// applies.
pub(crate) const CRYPTSETUP_DISCARD_WARNING: &str = cryptsetup_discard_warning!();

const DISCARD_LONG_HELP: &str = concat!(
    "What TRIM (discard) requests do.\n",
    "  ignore:   TRIM succeeds and changes nothing; nothing about usage leaks. Never-written \
     sectors read as decrypted noise, as under cryptsetup.\n",
    "  passdown: TRIM punches holes in the image file (the part of each request aligned to \
     4096 bytes, or to the sector size or the filesystem's block size if larger; fallocate \
     PUNCH_HOLE), which read back as zeroes and are reported as holes by \
     NBD block status (base:allocation). The holes show anyone who can read the image file, \
     without a key, which parts of the volume are unused (like cryptsetup --allow-discards).\n\n",
    "WARNING (cryptsetup-open(8) on --allow-discards): \"",
    cryptsetup_discard_warning!(),
    "\"\n\n",
    "The LUKS2 header flag allow-discards (cryptsetup --persistent --allow-discards) is not \
     honoured by itself: only --discard passdown discards."
);

/// `--discard` of `open` and `demo`.
#[derive(Clone, Copy, ValueEnum)]
enum DiscardArg {
    /// TRIM is a no-op (default).
    Ignore,
    /// TRIM punches holes in the image (leaks usage).
    Passdown,
}

impl DiscardArg {
    fn policy(self) -> volume::Discard {
        match self {
            DiscardArg::Ignore => volume::Discard::Ignore,
            DiscardArg::Passdown => volume::Discard::Passdown,
        }
    }
}

/// Listener and server flags shared by `open` and `serve`.
#[derive(clap::Args)]
struct ServerFlags {
    /// TCP address to listen on (repeatable); default 127.0.0.1:10809 unless --socket is given
    /// or the sockets come from systemd socket activation (LISTEN_FDS).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<std::net::SocketAddr>,
    /// Unix socket to listen on (repeatable).
    #[arg(long, value_name = "PATH")]
    socket: Vec<PathBuf>,
    /// Write the process id to FILE once every socket accepts connections; removed at exit.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Run in the background once every socket accepts connections (and the pid file is
    /// written): the command returns 0 then, or the error's exit code if it fails before.
    #[arg(long)]
    fork: bool,
    /// Most client connections at once, over all sockets (0 = no limit); a connection over
    /// the limit is closed at once.
    #[arg(long, value_name = "N", default_value_t = crate::nbd::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Close a connection that has not finished the NBD handshake within SECONDS (0 = no
    /// limit), so clients that connect and stall cannot hold connection slots (as qemu-nbd).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::nbd::DEFAULT_HANDSHAKE_LIMIT.as_secs())]
    handshake_limit: u64,
    /// Serve READs and WRITEs of at most BYTES inline, on the task reading the connection's
    /// requests: no hand-off to the blocking thread pool (fastest when the image is in the
    /// page cache, on tmpfs or a fast SSD), but that connection's next requests wait
    /// meanwhile. 0 = off: every request on the thread pool, many at once per connection
    /// (better for images on slow disks or network storage).
    #[arg(long, value_name = "BYTES", default_value_t = crate::export::VOLUME_INLINE_LIMIT)]
    inline_limit: u32,
    #[command(flatten)]
    tls: serve::TlsArgs,
}

impl ServerFlags {
    fn args(self) -> serve::ServerArgs {
        serve::ServerArgs {
            listen: self.listen,
            socket: self.socket,
            pid_file: self.pid_file,
            max_connections: self.max_connections,
            handshake_limit: self.handshake_limit,
            inline_limit: self.inline_limit,
            tls: self.tls,
            fork: self.fork,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a LUKS2 volume (keyslot 0) in IMAGE, creating or extending the file with --size.
    #[command(after_help = docs::EX_FORMAT)]
    Format {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// Create or extend the image to this size (bytes, or with K/M/G/T suffix, binary units).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: Option<u64>,
        /// Passphrase file, used byte for byte (`-` = all of stdin).
        #[arg(long, short = 'd', value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Encryption sector size in bytes.
        #[arg(long, default_value_t = 512, value_parser = parse_sector_size)]
        sector_size: u32,
        #[command(flatten)]
        kdf: KdfArgs,
        /// Volume label (at most 47 bytes).
        #[arg(long)]
        label: Option<String>,
        /// Do not ask before overwriting an existing LUKS header.
        #[arg(long, short = 'q')]
        batch_mode: bool,
        /// Then write encrypted zeros over the whole volume (as `nbdcrypt wipe`): it reads as
        /// zeros and the image's free space hides nothing. Interrupted, it is continued with
        /// `nbdcrypt wipe IMAGE --resume`.
        #[arg(long)]
        wipe: bool,
        /// Then escrow the volume key and UUID to the key service at URL (repeatable, tried in
        /// order), as `nbdcrypt escrow`; the service is checked before formatting.
        #[arg(long, value_name = "URL")]
        escrow: Vec<String>,
        #[command(flatten)]
        service: ServiceIdentityArgs,
    },
    /// Write encrypted zeros over the whole data segment, so the volume reads as zeros and the
    /// image holds no old data nor sparse holes. Ctrl-C (or SIGTERM) stops it cleanly and
    /// `--resume` continues it (progress in IMAGE.nbdcrypt-wipe).
    #[command(after_help = docs::EX_WIPE)]
    Wipe {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        #[command(flatten)]
        key: KeyArgs,
        /// Continue an interrupted wipe where it stopped (from IMAGE.nbdcrypt-wipe).
        #[arg(long)]
        resume: bool,
    },
    /// Print the header like `cryptsetup luksDump`.
    #[command(after_help = docs::EX_DUMP)]
    Dump {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// Print a JSON document instead: the same fields with stable names, and the LUKS2
        /// metadata verbatim under "metadata" (docs/json.md).
        #[arg(long, conflicts_with = "dump_json_metadata")]
        json: bool,
        /// Print only the LUKS2 JSON metadata, as `cryptsetup luksDump --dump-json-metadata`.
        #[arg(long)]
        dump_json_metadata: bool,
    },
    /// Check a passphrase: exit 0 if a keyslot opens, 2 if none does.
    #[command(after_help = docs::EX_TEST_PASSPHRASE)]
    TestPassphrase {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Unlock IMAGE and serve its plaintext over NBD until SIGINT/SIGTERM, or attach it as a
    /// kernel block device with --connect /dev/nbdN (until `nbdcrypt close /dev/nbdN`).
    #[command(after_help = docs::EX_OPEN)]
    Open {
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
    },
    /// Disconnect a kernel NBD device attached by `open --connect`: write back its cache,
    /// flush, detach, and wait until the serving process has wiped its keys and exited.
    #[command(after_help = docs::EX_CLOSE)]
    Close {
        /// The device, e.g. /dev/nbd0.
        device: PathBuf,
    },
    /// Serve several images from one server, each under its own export name: one unlock per
    /// image, in the order given. The first export is also the default export "".
    #[command(after_help = docs::EX_SERVE)]
    Serve {
        /// An export: NAME=IMAGE (repeatable; the name is everything before the first `=`).
        #[arg(long = "export", value_name = "NAME=IMAGE", required = true, value_parser = parse_named_path)]
        exports: Vec<(String, PathBuf)>,
        /// The passphrase of export NAME, from FILE byte for byte (`-` = all of stdin; one
        /// export at most). Exports without one are prompted for, each naming its image.
        #[arg(long, short = 'd', value_name = "NAME=FILE", value_parser = parse_named_path)]
        key_file: Vec<(String, PathBuf)>,
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
    },
    /// Add a keyslot (as `cryptsetup luksAddKey`): unlock with an existing passphrase (or
    /// --volume-key-file), store the volume key under a new one.
    #[command(after_help = docs::EX_ADD_KEY)]
    AddKey {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        #[command(flatten)]
        unlock: Unlocker,
        /// The new passphrase, from FILE byte for byte.
        #[arg(long, value_name = "FILE")]
        new_keyfile: Option<PathBuf>,
        /// Use the raw volume key in FILE (64 bytes) instead of an existing passphrase.
        #[arg(long, value_name = "FILE", conflicts_with = "key_file")]
        volume_key_file: Option<PathBuf>,
        /// The new keyslot's number (default: the lowest free one).
        #[arg(long, short = 'S', value_name = "N")]
        key_slot: Option<u32>,
        #[command(flatten)]
        kdf: KdfArgs,
        /// Instead of a new passphrase: a random secret wrapped by the key service at URL
        /// (repeatable, tried in order), stored in an `nbdcrypt-keyservice` token.
        #[arg(long = "key-service", value_name = "URL", requires = "kek",
              conflicts_with_all = ["new_keyfile", "volume_key_file"])]
        key_service: Vec<String>,
        /// The key service's KEK that wraps the secret (with --key-service).
        #[arg(long, value_name = "NAME")]
        kek: Option<String>,
        #[command(flatten)]
        service: ServiceIdentityArgs,
    },
    /// Seal the volume key and UUID with age to the key service's recovery officers and
    /// upload the package (docs/keyservice-api.md).
    #[command(after_help = docs::EX_ESCROW)]
    Escrow {
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
    },
    /// As a recovery officer: fetch the volume's escrow package from the key service, open it
    /// with your age identity, check it is this volume's, and add a passphrase keyslot
    /// (docs/keyservice-api.md). Exit 2 when the identity cannot open the package.
    #[command(after_help = docs::EX_RECOVER)]
    #[command(group(clap::ArgGroup::new("officer_token").required(true).args(["token", "token_file"])))]
    Recover {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// The key service (repeatable: tried in order).
        #[arg(long = "key-service", value_name = "URL", required = true)]
        key_service: Vec<String>,
        /// Your officer bearer token (`nbdcrypt-keyd token add NAME --role officer`).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// The token from FILE instead (not shown in the process list).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Your age identity file (`age-keygen -o OFFICER.key`).
        #[arg(long, value_name = "OFFICER.key")]
        identity: PathBuf,
        #[command(flatten)]
        tls: ServiceTlsArgs,
        /// The new passphrase, from FILE byte for byte (default: prompt; `-` = all of stdin).
        #[arg(long, value_name = "FILE", visible_alias = "key-file")]
        new_keyfile: Option<PathBuf>,
        /// The new keyslot's number (default: the lowest free one).
        #[arg(long, short = 'S', value_name = "N")]
        key_slot: Option<u32>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Change a passphrase (as `cryptsetup luksChangeKey`): the slot the old passphrase opens
    /// (or --key-slot) gets the new one.
    #[command(after_help = docs::EX_CHANGE_KEY)]
    ChangeKey {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        #[command(flatten)]
        unlock: Unlocker,
        /// The new passphrase, from FILE byte for byte.
        #[arg(long, value_name = "FILE")]
        new_keyfile: Option<PathBuf>,
        /// Only this keyslot.
        #[arg(long, short = 'S', value_name = "N")]
        key_slot: Option<u32>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove the keyslot that the given passphrase opens (as `cryptsetup luksRemoveKey`).
    #[command(after_help = docs::EX_REMOVE_KEY)]
    RemoveKey {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        #[command(flatten)]
        unlock: Unlocker,
        /// Allow removing the last keyslot (the volume becomes unusable).
        #[arg(long, short = 'q')]
        batch_mode: bool,
    },
    /// Wipe keyslot N (as `cryptsetup luksKillSlot`); asks for the passphrase of another slot
    /// unless --batch-mode.
    #[command(after_help = docs::EX_KILL_SLOT)]
    KillSlot {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// Keyslot number.
        slot: u32,
        #[command(flatten)]
        unlock: Unlocker,
        /// Do not ask for a passphrase of another slot.
        #[arg(long, short = 'q')]
        batch_mode: bool,
    },
    /// Recovery keys (BitLocker's recovery-password format).
    #[command(subcommand, after_help = docs::EX_RECOVERY_ADD)]
    RecoveryKey(RecoveryAction),
    /// Write the man pages (nbdcrypt.1 and one per subcommand) into DIR.
    #[command(hide = true, after_help = docs::EX_MAN)]
    Man {
        /// Directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// Print the shell completion script for SHELL on stdout.
    #[command(hide = true, after_help = docs::EX_COMPLETIONS)]
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Wipe every keyslot and the keyslots area (as `cryptsetup erase`): no passphrase opens
    /// the volume afterwards, unless a header backup is restored.
    #[command(after_help = docs::EX_ERASE)]
    Erase {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// Do not ask for confirmation.
        #[arg(long, short = 'q')]
        batch_mode: bool,
    },
    /// Save the header area (both copies and the keyslots area) to a file, as
    /// `cryptsetup luksHeaderBackup` does (same format).
    #[command(after_help = docs::EX_HEADER_BACKUP)]
    HeaderBackup {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// The backup file to create (must not exist).
        #[arg(long, value_name = "FILE")]
        header_backup_file: PathBuf,
    },
    /// Write a header backup (ours or cryptsetup's) back over the image's header area; refuses
    /// a backup of another volume (different volume key digest) unless --batch-mode.
    #[command(after_help = docs::EX_HEADER_RESTORE)]
    HeaderRestore {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        header_backup_file: PathBuf,
        /// Restore even if the backup belongs to another volume.
        #[arg(long, short = 'q')]
        batch_mode: bool,
    },
    /// Rewrite a damaged header copy from the good one (nothing else ever repairs).
    #[command(after_help = docs::EX_REPAIR)]
    Repair {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
    },
    /// Print what the KDFs reach in --iter-time and the XTS throughput per sector size on this
    /// machine, like `cryptsetup benchmark`.
    #[command(after_help = docs::EX_BENCHMARK)]
    Benchmark {
        /// KDF target time, milliseconds.
        #[arg(long, short = 'i', value_name = "MS", default_value_t = 2000)]
        iter_time: u32,
        /// Argon2 memory cost in KiB.
        #[arg(long, value_name = "KIB", default_value_t = 1 << 20)]
        pbkdf_memory: u32,
        /// Argon2 parallel lanes.
        #[arg(long, value_name = "N", default_value_t = 4)]
        pbkdf_parallel: u32,
    },
    /// Quick start: create (once) a small demo volume with a generated key file in DIR, and
    /// serve it on 127.0.0.1:10809.
    #[command(after_help = docs::EX_DEMO)]
    Demo {
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
        tls: serve::TlsArgs,
    },
}

#[derive(Subcommand)]
enum RecoveryAction {
    /// Generate a recovery key (48 digits, 8 groups of 6), store it as a new keyslot with an
    /// `nbdcrypt-recovery` token, and print it once.
    #[command(after_help = docs::EX_RECOVERY_ADD)]
    Add {
        /// Image file.
        image: PathBuf,
        #[command(flatten)]
        header: HeaderArg,
        #[command(flatten)]
        unlock: Unlocker,
        /// The new keyslot's number (default: the lowest free one).
        #[arg(long, short = 'S', value_name = "N")]
        key_slot: Option<u32>,
        #[command(flatten)]
        kdf: KdfArgs,
        /// Escrow the volume key, UUID and this recovery key to the key service at URL
        /// (repeatable, tried in order) before the keyslot is written: if the upload fails,
        /// nothing changes.
        #[arg(long, value_name = "URL")]
        escrow: Vec<String>,
        #[command(flatten)]
        service: ServiceIdentityArgs,
    },
}

/// Parse `NAME=PATH` (`--export`, `serve --key-file`): the name is everything before the first
/// `=` and must not be empty.
fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?} is not NAME=PATH")),
    }
}

/// Build `serve`'s exports from its flags: every name given to --key-file, --recovery-key and
/// --read-only=NAME must be an export, and at most once per flag.
fn serve_exports(
    exports: Vec<(String, PathBuf)>,
    header: Vec<(String, PathBuf)>,
    key_file: Vec<(String, PathBuf)>,
    recovery_key: Vec<String>,
    read_only: Vec<String>,
    discard: Vec<String>,
) -> Result<Vec<serve::ImageExport>, CliError> {
    let mut out: Vec<serve::ImageExport> = Vec::with_capacity(exports.len());
    for (name, image) in exports {
        if out.iter().any(|x| x.name == name) {
            return Err(CliError::Usage(format!("export {name} is given twice")));
        }
        out.push(serve::ImageExport {
            name,
            image,
            header: None,
            key_file: None,
            recovery: None,
            key_slot: None,
            read_only: false,
            discard: volume::Discard::Ignore,
            key_service: None,
        });
    }
    let find = |out: &[serve::ImageExport], name: &str, flag: &str| {
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
        if out[i].key_file.replace(file).is_some() {
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
        if out[i].key_file.is_some() {
            return Err(CliError::Usage(format!(
                "export {name} has both --key-file and --recovery-key"
            )));
        }
        if out[i].recovery.replace(file).is_some() {
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
    let mut all: Option<volume::Discard> = None;
    let mut named: Vec<(usize, volume::Discard)> = Vec::new();
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

/// Parse `--sector-size`: 512 or 4096.
fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("sector size {s} is not supported (512 or 4096)")),
    }
}

/// Parse a size: bytes, or a number with a K/M/G/T suffix (powers of 1024; `KiB`, `M`, `MB`
/// all accepted as binary units, as `truncate -s` and cryptsetup do).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1G, 64M, 1048576)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown size unit {unit:?} in {s:?}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Entry point of the `nbdcrypt` binary; returns the process exit code.
pub fn main() -> i32 {
    // This process holds passphrases and keys: no core file, and no ptrace or /proc/PID/mem
    // by other processes of the same user (issue 7).
    let non_dumpable = crate::crypto::secret::make_non_dumpable();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One line, as every other error: clap's first line, without its "error: ".
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("nbdcrypt: {}", first.trim_start_matches("error: "));
            eprintln!("hint: see `nbdcrypt --help` or `nbdcrypt COMMAND --help`");
            return EXIT_INVALID;
        }
        Err(e) => {
            let _ = e.print(); // --help, --version
            return EXIT_OK;
        }
    };
    init_logging(cli.log_format);
    if let Err(e) = non_dumpable {
        tracing::warn!(
            "could not make the process non-dumpable ({e}): a core file could hold keys"
        );
    }
    let _ = MEMORY_LIMIT.set(cli.pbkdf_memory_limit);
    match run(cli.command) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("nbdcrypt: {e}");
            if let Some(h) = e.hint() {
                eprintln!("hint: {h}");
            }
            e.exit_code()
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NBDCRYPT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        // The journal stamps every line itself (systemd.exec(5), $JOURNAL_STREAM).
        LogFormat::Text if stderr_is_journal() => fmt.with_ansi(false).without_time().try_init(),
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => fmt.json().with_current_span(false).try_init(),
    };
}

/// Whether stderr is connected to the systemd journal: `$JOURNAL_STREAM` (`DEVICE:INODE`,
/// decimal) names the stderr descriptor's device and inode (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    // SAFETY: a zeroed stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of descriptor 2 into a valid buffer.
    if unsafe { libc::fstat(2, &mut st) } < 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn run(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Format {
            image,
            header,
            size,
            key_file,
            sector_size,
            kdf,
            label,
            batch_mode,
            wipe,
            escrow,
            service,
        } => {
            confirm_overwrite(header.header.as_deref().unwrap_or(&image), batch_mode)?;
            let escrow_to = if escrow.is_empty() {
                None
            } else {
                let args = service.args(&escrow)?;
                escrow::preflight(&args)?;
                Some(args)
            };
            let pass = read_passphrase(key_file.as_deref(), Prompt::New(&image))?;
            let opts = FormatOptions {
                size,
                sector_size,
                kdf: kdf.choice(),
                label,
                header: header.header,
            };
            let uuid = volume::format(&image, &opts, pass.expose())?;
            eprintln!("formatted {} as LUKS2 (UUID {uuid})", image.display());
            if let Some(args) = &escrow_to {
                escrow::after_format(&image, opts.header.as_deref(), pass.expose(), args, wipe)?;
            }
            if wipe {
                let (o, lh) = open_loaded(&image, opts.header.as_deref(), Access::WriteExclusive)?;
                let key = try_unlock(&o.header, &o.header_path, &lh, pass.expose(), Some(0))?;
                wipe::run(o, &lh, key, &image, false)?;
            }
            Ok(())
        }
        Command::Wipe {
            image,
            header,
            key,
            resume,
        } => {
            let (o, lh) = open_loaded(&image, header.header.as_deref(), Access::WriteExclusive)?;
            let k = passphrase::unlock_with_tries(key.unlock.source(), &image, |pass| {
                try_unlock(&o.header, &o.header_path, &lh, pass, key.key_slot)
            })?;
            wipe::run(o, &lh, k, &image, resume)
        }
        Command::Dump {
            image,
            header,
            json,
            dump_json_metadata,
        } => {
            // A detached header file given as IMAGE is dumped on its own, as `cryptsetup
            // luksDump HEADER` does: without its data file the volume size is unknown (null).
            let (o, lh, data_known) =
                match open_loaded(&image, header.header.as_deref(), Access::Inspect) {
                    Err(CliError::Volume(VolumeError::DetachedHeader { .. }))
                        if header.header.is_none() =>
                    {
                        let o = volume::OpenedImage::open(&image, None, Access::Inspect)?;
                        let lh = volume::load_detached_header(&o.header, &image, 0)?;
                        warn_all(&lh.warnings);
                        (o, lh, false)
                    }
                    r => {
                        let (o, lh) = r?;
                        (o, lh, true)
                    }
                };
            if json || dump_json_metadata {
                let text = if json {
                    let mut doc = dump::json(&lh, &image, header.header.as_deref());
                    if !data_known {
                        doc["segments"][0]["size"] = serde_json::Value::Null;
                    }
                    serde_json::to_string_pretty(&doc)
                } else {
                    serde_json::to_string_pretty(&lh.metadata)
                }
                .map_err(|e| CliError::Usage(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", dump::render(&lh));
            }
            if !data_known {
                eprintln!(
                    "note: {} is a detached header; give its data file as IMAGE with --header for the volume's size and holes",
                    image.display()
                );
                return Ok(());
            }
            // On stderr, so stdout stays luksDump's text line for line.
            for w in dump::discard_warnings(&o.data, &image, &lh)? {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Command::TestPassphrase { image, header, key } => {
            let (o, lh) = open_loaded(&image, header.header.as_deref(), Access::Inspect)?;
            let k = passphrase::unlock_with_tries(key.unlock.source(), &image, |pass| {
                try_unlock(&o.header, &o.header_path, &lh, pass, key.key_slot)
            })?;
            eprintln!("Key slot {} unlocked.", k.keyslot);
            Ok(())
        }
        Command::Open {
            image,
            connect,
            foreground,
            disconnect,
            header,
            key,
            server,
            export_name,
            read_only,
            discard,
            service,
        } => {
            if let Some(device) = disconnect {
                return connect::close(&device);
            }
            let image = image.expect("clap requires IMAGE without --disconnect");
            let export = serve::ImageExport {
                key_service: Some(service.identity()?),
                name: export_name.unwrap_or_else(|| serve::default_export_name(&image)),
                image,
                header: header.header,
                key_file: key.unlock.key_file,
                recovery: key.unlock.recovery_key,
                key_slot: key.key_slot,
                read_only,
                discard: discard.policy(),
            };
            match connect {
                Some(device) => connect::open_connect(
                    export,
                    &device,
                    foreground,
                    server.pid_file,
                    server.inline_limit,
                ),
                None => serve::open(export, server.args()),
            }
        }
        Command::Close { device } => connect::close(&device),
        Command::Serve {
            exports,
            header,
            key_file,
            recovery_key,
            read_only,
            discard,
            server,
            service,
        } => {
            let mut exports =
                serve_exports(exports, header, key_file, recovery_key, read_only, discard)?;
            let identity = service.identity()?;
            for x in &mut exports {
                x.key_service = Some(identity.clone());
            }
            serve::serve(exports, server.args())
        }
        Command::Escrow {
            image,
            header,
            unlock,
            key_service,
            service,
        } => escrow::escrow(
            &image,
            header.header.as_deref(),
            unlock.source(),
            &service.args(&key_service)?,
        ),
        Command::AddKey {
            image,
            header,
            unlock,
            key_slot,
            key_service,
            kek,
            service,
            ..
        } if !key_service.is_empty() => keyservice::add_key(
            &image,
            header.header.as_deref(),
            unlock.source(),
            &service.args(&key_service)?,
            kek.as_deref().unwrap_or_default(),
            key_slot,
        ),
        Command::AddKey {
            image,
            header,
            unlock,
            new_keyfile,
            volume_key_file,
            key_slot,
            kdf,
            ..
        } => keyslots::add_key(
            &image,
            header.header.as_deref(),
            unlock.source(),
            new_keyfile.as_deref(),
            volume_key_file.as_deref(),
            key_slot,
            &kdf.choice(),
        ),
        Command::ChangeKey {
            image,
            header,
            unlock,
            new_keyfile,
            key_slot,
            kdf,
        } => keyslots::change_key(
            &image,
            header.header.as_deref(),
            unlock.source(),
            new_keyfile.as_deref(),
            key_slot,
            &kdf.choice(),
        ),
        Command::RemoveKey {
            image,
            header,
            unlock,
            batch_mode,
        } => keyslots::remove_key(
            &image,
            header.header.as_deref(),
            unlock.source(),
            batch_mode,
        ),
        Command::KillSlot {
            image,
            header,
            slot,
            unlock,
            batch_mode,
        } => keyslots::kill_slot(
            &image,
            header.header.as_deref(),
            slot,
            unlock.source(),
            batch_mode,
        ),
        Command::RecoveryKey(RecoveryAction::Add {
            image,
            header,
            unlock,
            key_slot,
            kdf,
            escrow,
            service,
        }) => keyslots::recovery_key_add(
            &image,
            header.header.as_deref(),
            unlock.source(),
            key_slot,
            &kdf.choice(),
            match escrow.is_empty() {
                true => None,
                false => Some(service.args(&escrow)?),
            }
            .as_ref(),
        ),
        Command::Recover {
            image,
            header,
            key_service,
            token,
            token_file,
            identity,
            tls,
            new_keyfile,
            key_slot,
            kdf,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => zeroize::Zeroizing::new(t),
                (None, Some(f)) => zeroize::Zeroizing::new(
                    std::fs::read_to_string(&f)
                        .map_err(|e| {
                            CliError::Usage(format!("cannot read token file {}: {e}", f.display()))
                        })?
                        .trim()
                        .to_string(),
                ),
                (None, None) => unreachable!("clap requires --token or --token-file"),
            };
            recover::recover(
                &image,
                header.header.as_deref(),
                &recover::Officer {
                    urls: &key_service,
                    token: &token,
                    ca: &tls.key_service_ca,
                    timeout: service_timeout(tls.key_service_timeout)?,
                    identity: &identity,
                },
                new_keyfile.as_deref(),
                key_slot,
                &kdf.choice(),
            )
        }
        Command::Erase {
            image,
            header,
            batch_mode,
        } => keyslots::erase(&image, header.header.as_deref(), batch_mode),
        Command::HeaderBackup {
            image,
            header,
            header_backup_file,
        } => keyslots::header_backup(&image, header.header.as_deref(), &header_backup_file),
        Command::HeaderRestore {
            image,
            header,
            header_backup_file,
            batch_mode,
        } => keyslots::header_restore(
            &image,
            header.header.as_deref(),
            &header_backup_file,
            batch_mode,
        ),
        Command::Repair { image, header } => keyslots::repair(&image, header.header.as_deref()),
        Command::Benchmark {
            iter_time,
            pbkdf_memory,
            pbkdf_parallel,
        } => benchmark::run(iter_time, pbkdf_memory, pbkdf_parallel),
        Command::Demo {
            dir,
            listen,
            discard,
            tls,
        } => serve::demo(&dir, listen, discard.policy(), tls),
        Command::Man { dir } => docs::man(&dir),
        Command::Completions { shell } => docs::completions(shell),
    }
}

/// Ask before `format` overwrites an existing LUKS header (cryptsetup always asks; we ask only
/// when there is something to lose). `--batch-mode` skips the question.
fn confirm_overwrite(image: &Path, batch: bool) -> Result<(), CliError> {
    let Ok(file) = volume::open_image(image, Access::Inspect) else {
        return Ok(());
    };
    let has_header = matches!(
        volume::load_header(&file, image),
        Ok(_)
            | Err(VolumeError::Corrupt { .. })
            | Err(VolumeError::DetachedHeader { .. })
            | Err(VolumeError::Unsupported { .. })
    );
    if !has_header {
        return Ok(());
    }
    confirm(
        &format!(
            "{} already holds a LUKS header; formatting destroys it and every keyslot",
            image.display()
        ),
        batch,
    )
}

/// Ask for `YES` on a terminal (as cryptsetup); without a terminal, refuse unless `batch`.
fn confirm(what: &str, batch: bool) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if batch {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{what}; add --batch-mode to go ahead"
        )));
    }
    eprint!("WARNING: {what}.\nAre you sure? (Type 'yes' in capital letters): ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if answer.trim() != "YES" {
        return Err(CliError::Usage("operation aborted".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_size, serve_exports};
    use crate::volume::Discard;
    use std::path::PathBuf;

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

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
