//! The `nbdcrypt` command line: the parser (`Cli`, one variant of `Command` per
//! subcommand), [`main`] and the dispatch to each subcommand's `run`.
//!
//! Where things are: each subcommand's arguments (clap derive) and its `run` in the module of
//! its name (`format.rs`, `open.rs`, `serve.rs`, `keyslots.rs` for the keyslot commands,
//! `header_ops.rs` for the whole-header ones, ...); arguments shared by several commands in
//! `args.rs`, `server_args.rs` and `service_args.rs`; opening and unlocking a volume in
//! `unlock.rs`; errors and exit codes in `error.rs`. No module below uses this one.
//!
//! Exit codes (as cryptsetup's, `cryptsetup(8)` "RETURN CODES"): 0 success; 1 wrong parameters
//! or an invalid volume; 2 no key available with this passphrase; 3 out of memory; 4 wrong
//! device (image missing or unreadable); 5 device busy. Errors are one line on stderr, with a
//! hint line where one helps.

mod args;
mod benchmark;
mod connect;
mod daemon;
mod demo;
mod docs;
mod dump;
mod error;
mod escrow;
mod format;
mod header_ops;
mod keyservice;
mod keyslots;
mod open;
mod passphrase;
mod recover;
mod recovery_key;
mod rewrap;
mod serve;
mod server_args;
mod service_args;
mod test_passphrase;
mod unlock;
mod wipe;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

pub use error::{
    CliError, EXIT_BUSY, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_NO_KEY, EXIT_NO_MEMORY, EXIT_OK,
    EXIT_WRONG_DEVICE,
};

#[derive(Parser)]
#[command(
    name = "nbdcrypt",
    version,
    arg_required_else_help = true,
    about = "LUKS2 volume images served as NBD block devices, in userspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse to unlock keyslots whose Argon2 memory cost exceeds this many KiB (default: half
    /// of RAM); such slots are skipped before anything is allocated.
    #[arg(long, global = true, value_name = "KIB")]
    pbkdf_memory_limit: Option<u64>,
    /// Refuse keyslots (and digests) whose KDF is estimated to take longer than this many
    /// seconds per try (at a fast machine's speed; default 60); such slots are skipped before
    /// their KDF runs, so a hostile header cannot make an unlock run for hours.
    #[arg(long, global = true, value_name = "SECS")]
    unlock_time_limit: Option<u64>,
    /// Ask no confirmation question (cryptsetup's -q): overwrite an existing header, remove
    /// or kill the last keyslot, kill a slot without another slot's passphrase, erase,
    /// restore a backup of another volume. Accepted by every command.
    #[arg(long, short = 'q', global = true)]
    batch_mode: bool,
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

/// The subcommands; each variant's arguments and `run` are in the module it names.
#[derive(Subcommand)]
enum Command {
    /// Create a LUKS2 volume (keyslot 0) in IMAGE, creating or extending the file with --size.
    #[command(after_help = docs::EX_FORMAT)]
    Format(format::FormatArgs),
    /// Write encrypted zeros over the whole data segment, so the volume reads as zeros and the
    /// image holds no old data nor sparse holes. Ctrl-C (or SIGTERM) stops it cleanly and
    /// `--resume` continues it (progress in IMAGE.nbdcrypt-wipe).
    #[command(after_help = docs::EX_WIPE)]
    Wipe(wipe::WipeArgs),
    /// Print the header like `cryptsetup luksDump`.
    #[command(after_help = docs::EX_DUMP)]
    Dump(dump::DumpArgs),
    /// Check a passphrase: exit 0 if a keyslot opens, 2 if none does.
    #[command(after_help = docs::EX_TEST_PASSPHRASE)]
    TestPassphrase(test_passphrase::TestPassphraseArgs),
    /// Unlock IMAGE and serve its plaintext over NBD until SIGINT/SIGTERM, or attach it as a
    /// kernel block device with --connect /dev/nbdN (until `nbdcrypt close /dev/nbdN`).
    #[command(after_help = docs::EX_OPEN)]
    Open(open::OpenArgs),
    /// Disconnect a kernel NBD device attached by `open --connect`: write back its cache,
    /// flush, detach, and wait until the serving process has wiped its keys and exited.
    #[command(after_help = docs::EX_CLOSE)]
    Close(open::CloseArgs),
    /// Serve several images from one server, each under its own export name: one unlock per
    /// image, in the order given. The first export is also the default export "".
    #[command(after_help = docs::EX_SERVE)]
    Serve(serve::ServeArgs),
    /// Add a keyslot (as `cryptsetup luksAddKey`): unlock with an existing passphrase (or
    /// --volume-key-file), store the volume key under a new one.
    #[command(after_help = docs::EX_ADD_KEY)]
    AddKey(keyslots::AddKeyArgs),
    /// Seal the volume key and UUID with age to the key service's recovery officers and
    /// upload the package (docs/keyservice-api.md). Without a key flag, unlocks through the
    /// volume's key-service keyslot as `open` does.
    #[command(after_help = docs::EX_ESCROW)]
    Escrow(escrow::EscrowArgs),
    /// As a recovery officer: fetch the volume's escrow package from the key service, open it
    /// with your age identity, check it is this volume's, and add a passphrase keyslot
    /// (docs/keyservice-api.md). Exit 2 when the identity cannot open the package.
    #[command(after_help = docs::EX_RECOVER)]
    Recover(recover::RecoverArgs),
    /// Change a passphrase (as `cryptsetup luksChangeKey`): the slot the old passphrase opens
    /// (or --key-slot) gets the new one.
    #[command(after_help = docs::EX_CHANGE_KEY)]
    ChangeKey(keyslots::ChangeKeyArgs),
    /// Remove the keyslot that the given passphrase opens (as `cryptsetup luksRemoveKey`).
    #[command(after_help = docs::EX_REMOVE_KEY)]
    RemoveKey(keyslots::RemoveKeyArgs),
    /// Wipe keyslot N (as `cryptsetup luksKillSlot`); asks for the passphrase of another slot
    /// unless --batch-mode.
    #[command(after_help = docs::EX_KILL_SLOT)]
    KillSlot(keyslots::KillSlotArgs),
    /// Recovery keys (BitLocker's recovery-password format).
    #[command(subcommand, after_help = docs::EX_RECOVERY_ADD)]
    RecoveryKey(recovery_key::RecoveryAction),
    /// Write the man pages (nbdcrypt.1 and one per subcommand) into DIR.
    #[command(hide = true, after_help = docs::EX_MAN)]
    Man(docs::ManArgs),
    /// Print the shell completion script for SHELL on stdout.
    #[command(hide = true, after_help = docs::EX_COMPLETIONS)]
    Completions(docs::CompletionsArgs),
    /// Wipe every keyslot and the keyslots area (as `cryptsetup erase`): no passphrase opens
    /// the volume afterwards, unless a header backup is restored.
    #[command(after_help = docs::EX_ERASE)]
    Erase(header_ops::EraseArgs),
    /// Save the header area (both copies and the keyslots area) to a file, as
    /// `cryptsetup luksHeaderBackup` does (same format).
    #[command(after_help = docs::EX_HEADER_BACKUP)]
    HeaderBackup(header_ops::HeaderBackupArgs),
    /// Write a header backup (ours or cryptsetup's) back over the image's header area; refuses
    /// a backup of another volume (different volume key digest) unless --batch-mode.
    #[command(after_help = docs::EX_HEADER_RESTORE)]
    HeaderRestore(header_ops::HeaderRestoreArgs),
    /// Rewrite a damaged header copy from the good one (nothing else ever repairs).
    #[command(after_help = docs::EX_REPAIR)]
    Repair(header_ops::RepairArgs),
    /// Print what the KDFs reach in --iter-time and the XTS throughput per sector size on this
    /// machine, like `cryptsetup benchmark`.
    #[command(after_help = docs::EX_BENCHMARK)]
    Benchmark(benchmark::BenchmarkArgs),
    /// Quick start: create (once) a small demo volume with a generated key file in DIR, and
    /// serve it on 127.0.0.1:10809.
    #[command(after_help = docs::EX_DEMO)]
    Demo(demo::DemoArgs),
}

/// Entry point of the `nbdcrypt` binary; returns the process exit code.
pub fn main() -> i32 {
    // This process holds passphrases and keys: no core file, and no ptrace or /proc/PID/mem
    // by other processes of the same user.
    let non_dumpable = crate::crypto::secret::make_non_dumpable();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    init_logging(cli.log_format);
    // Commands that only print end quietly on a closed pipe (`nbdcrypt dump IMAGE | head`).
    // Every other one keeps SIGPIPE ignored: it may talk to a key service or serve clients,
    // and a peer's hang-up must be an EPIPE error there (rustls writes with writev, which has
    // no MSG_NOSIGNAL), never a silent death.
    if matches!(cli.command, Command::Dump(_) | Command::Benchmark(_)) {
        crate::sigpipe::quiet_on_closed_pipe();
    }
    if let Err(e) = non_dumpable {
        tracing::warn!(
            "could not make the process non-dumpable ({e}): a core file could hold keys"
        );
    }
    unlock::set_memory_limit(cli.pbkdf_memory_limit);
    unlock::set_time_limit(cli.unlock_time_limit);
    match run(cli.command, cli.batch_mode) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            // Messages may quote header strings: no control character reaches the terminal.
            let esc = crate::format::escape_lines_for_terminal;
            eprintln!("nbdcrypt: {}", esc(&e.to_string()));
            if let Some(h) = e.hint() {
                eprintln!("hint: {}", esc(h));
            }
            e.exit_code()
        }
    }
}

/// What a command line clap did not take prints, and the exit code: `--help` and
/// `--version` print to stdout (exit 0); `nbdcrypt` alone (or a command group alone) prints
/// its help; any other usage error prints clap's whole message — what is missing, the
/// similar argument or command it suggests, the accepted values, the usage line — and exits
/// with cryptsetup's code for wrong parameters ([`EXIT_INVALID`]).
fn usage_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => EXIT_OK,
        _ => EXIT_INVALID,
    }
}

/// Logging on stderr as `--log-format` and `NBDCRYPT_LOG` ask.
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

/// Runs one subcommand.
///
/// `batch_mode` is the global `--batch-mode`, for the commands that ask.
fn run(cmd: Command, batch_mode: bool) -> Result<(), CliError> {
    match cmd {
        Command::Format(a) => a.run(batch_mode),
        Command::Wipe(a) => a.run(),
        Command::Dump(a) => a.run(),
        Command::TestPassphrase(a) => a.run(),
        Command::Open(a) => a.run(),
        Command::Close(a) => a.run(),
        Command::Serve(a) => a.run(),
        Command::AddKey(a) => a.run(),
        Command::Escrow(a) => a.run(),
        Command::Recover(a) => a.run(),
        Command::ChangeKey(a) => a.run(),
        Command::RemoveKey(a) => a.run(batch_mode),
        Command::KillSlot(a) => a.run(batch_mode),
        Command::RecoveryKey(a) => a.run(),
        Command::Erase(a) => a.run(batch_mode),
        Command::HeaderBackup(a) => a.run(),
        Command::HeaderRestore(a) => a.run(batch_mode),
        Command::Repair(a) => a.run(),
        Command::Benchmark(a) => a.run(),
        Command::Demo(a) => a.run(),
        Command::Man(a) => a.run(Cli::command()),
        Command::Completions(a) => a.run(Cli::command()),
    }
}
