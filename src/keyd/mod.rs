//! The `nbdcrypt-keyd` command line (`docs/keyservice-api.md` "Administration"): creates the
//! store, serves the API, and administers hosts, the server certificate, volume ownership,
//! tokens, KEKs, officers and the audit log by
//! writing the store directly (SQLite allows this while `serve` runs; changes apply to the
//! server's next request).
//!
//! The parser and the dispatch are here; `audit ...` is in `audit.rs`, `join` (run on a host,
//! not on the service) in `join.rs`, `serve`'s flags in `serve.rs`, certificate lifetimes and
//! `server-cert` in `certs.rs`, `volume` in `volumes.rs`, the files this command line reads and
//! writes in `files.rs`, its errors in `error.rs`.
//!
//! Exit status: 0 success, 1 failure (including `audit verify` finding a bad row), 2 usage.

mod audit;
mod certs;
mod error;
mod files;
mod join;
mod serve;
mod volumes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::keyservice::pki::{self, Validity};
use crate::keyservice::store::{RootKey, RootSource, Store};
use crate::keyservice::{server, Role};

use audit::AuditCmd;
use certs::{cert_days, default_names, issue_host, HostFiles, ServerCertCmd};
use error::KeydError;
use files::read_passphrase;
use join::join;
use serve::ServeArgs;
use volumes::VolumeCmd;

/// `join`'s examples (the token from a file or stdin, never on the command line).
const EX_JOIN: &str = "Examples:
  nbdcrypt-keyd join https://keyd:8443 --token-file hostJ.token --ca ca.pem
  ssh admin@keyd nbdcrypt-keyd host join-token hostJ \\
      | nbdcrypt-keyd join https://keyd:8443 --token-file - --ca ca.pem";

/// Key service for nbdcrypt volumes: KEK wrapping, escrow, audit.
#[derive(Parser)]
#[command(name = "nbdcrypt-keyd", version)]
struct Cli {
    /// The store's directory (database, CA, server certificate, root key file).
    #[arg(long, global = true, default_value = "/var/lib/nbdcrypt-keyd")]
    data_dir: PathBuf,
    /// Root key from Argon2id of the passphrase in this file (first line) instead of the
    /// `root.key` file; given to `init` it makes a passphrase-protected store.
    #[arg(long, global = true)]
    root_passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the store: database, root key, CA, server certificate; print the admin token once
    /// (alone on stdout, so `TOKEN=$(nbdcrypt-keyd init)` takes it; the rest goes to stderr).
    Init {
        /// DNS name or IP address clients use to reach the server (repeatable; default
        /// localhost, 127.0.0.1 and ::1).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Days the server certificate is valid for (1 to 3650; the CA is valid for 3650).
        #[arg(long, value_name = "DAYS", default_value_t = pki::DEFAULT_CERT_DAYS,
              value_parser = cert_days)]
        cert_days: u32,
    },
    /// Serve the HTTPS API.
    Serve(ServeArgs),
    /// Host identities (client certificates).
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// The server's TLS certificate.
    ServerCert {
        #[command(subcommand)]
        cmd: ServerCertCmd,
    },
    /// Volume ownership: which host may wrap, unwrap and escrow each volume.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Bearer tokens of people.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Key-encryption keys.
    Kek {
        #[command(subcommand)]
        cmd: KekCmd,
    },
    /// Recovery officers (age recipients escrow packages are sealed to).
    Officer {
        #[command(subcommand)]
        cmd: OfficerCmd,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// On a host: redeem a join token at the service URL for a client certificate. The key is
    /// made here and never sent; writes OUT/host.key (0600), OUT/host.pem and OUT/ca.pem, the
    /// files `nbdcrypt` reads by default from /etc/nbdcrypt/keyservice.
    #[command(
        group(clap::ArgGroup::new("join_token").required(true).args(["token", "token_file"])),
        after_help = EX_JOIN
    )]
    Join {
        /// The service, https://HOST[:PORT].
        url: String,
        /// The join token (`nbj_...`) on the command line. Discouraged: any local user sees it
        /// in the process list; use --token-file.
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// The join token from FILE (`-` = stdin; one trailing newline is dropped).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The service's CA certificate (its `ca.pem`), given with the token.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// Directory for host.key, host.pem and ca.pem (none of them may exist).
        #[arg(long, value_name = "DIR", default_value = "/etc/nbdcrypt/keyservice")]
        out: PathBuf,
        /// Seconds the service may take.
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Issue a client certificate: writes host.pem, host.key (0600) and ca.pem into --out-dir
    /// (created 0700 if missing; none of them may exist), the layout `nbdcrypt` reads by
    /// default from /etc/nbdcrypt/keyservice. The host is recorded only once they are written.
    Add {
        /// Host name (A-Z a-z 0-9 - _ .).
        name: String,
        /// Directory for host.pem, host.key and ca.pem.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
        /// Days the certificate is valid for (1 to 3650).
        #[arg(long, value_name = "DAYS", default_value_t = pki::DEFAULT_CERT_DAYS,
              value_parser = cert_days)]
        cert_days: u32,
    },
    /// Issue a new key and certificate for existing host NAME (same name: its volumes keep
    /// working); writes host.pem, host.key (0600) and ca.pem into --out-dir as `host add`
    /// does; the old certificate is refused from the next request on.
    Renew {
        /// Host name.
        name: String,
        /// Directory for host.pem, host.key and ca.pem.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
        /// Days the certificate is valid for (1 to 3650).
        #[arg(long, value_name = "DAYS", default_value_t = pki::DEFAULT_CERT_DAYS,
              value_parser = cert_days)]
        cert_days: u32,
    },
    /// Every host as JSON lines: name, fingerprint, revoked, created_ms, volumes (owned).
    List,
    /// Remove host NAME: its certificate is refused and the name is free again. Refused while
    /// it owns volumes (`volume assign` them to another host first).
    Remove {
        /// Host name.
        name: String,
    },
    /// Refuse the host's certificate from the next request on.
    Revoke {
        /// Host name.
        name: String,
    },
    /// Print a one-time join token for new host NAME (only its SHA-256 is stored): the host
    /// runs `nbdcrypt-keyd join URL --token-file T --ca ca.pem` to get its certificate.
    JoinToken {
        /// Host name (A-Z a-z 0-9 - _ .).
        name: String,
        /// Seconds the token stays valid (1 to 2592000).
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        ttl: u64,
        /// Days the certificate issued for the token is valid (1 to 3650).
        #[arg(long, value_name = "DAYS", default_value_t = pki::DEFAULT_CERT_DAYS,
              value_parser = cert_days)]
        cert_days: u32,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it once.
    Add {
        /// Token (person) name.
        name: String,
        /// admin, officer or auditor.
        #[arg(long)]
        role: Role,
    },
    /// Revoke a token.
    Revoke {
        /// Token name.
        name: String,
    },
    /// Every token as JSON lines: name, role, revoked, created_ms (never the token).
    List,
}

#[derive(Subcommand)]
enum KekCmd {
    /// Create a KEK (version 1).
    Create {
        /// KEK name.
        name: String,
    },
    /// Add a new current version (older ones still unwrap until --min-unwrap-version).
    Rotate {
        /// KEK name.
        name: String,
    },
    /// Versions, minimum unwrap version and keyslots using each version (JSON).
    Show {
        /// KEK name.
        name: String,
    },
    /// Change a KEK's settings.
    Set {
        /// KEK name.
        name: String,
        /// Versions below this no longer unwrap.
        #[arg(long)]
        min_unwrap_version: u32,
    },
}

#[derive(Subcommand)]
enum OfficerCmd {
    /// Add an officer with an age X25519 recipient (`age1...`).
    Add {
        /// Officer name.
        name: String,
        /// The officer's age recipient.
        recipient: String,
    },
    /// Every officer as JSON lines: name, recipient.
    List,
    /// Remove officer NAME: escrow packages sealed from now on leave them out (packages
    /// sealed before still open with their identity).
    Remove {
        /// Officer name.
        name: String,
    },
}

/// The store's root key: from `--root-passphrase-file` when given, else the root key file.
fn unlock(cli: &Cli, store: &Store) -> Result<RootKey, KeydError> {
    let p = match &cli.root_passphrase_file {
        Some(f) => Some(read_passphrase(f)?),
        None => None,
    };
    Ok(store.unlock(p.as_deref().map(|v| &v[..]))?)
}

/// Signs an audit checkpoint after a command that unlocked the root key. The command's change
/// is committed already, so a failure is a warning, not the command's failure.
fn seal(store: &mut Store, root: &RootKey) {
    if let Err(e) = store.audit_checkpoint(root, "cli") {
        eprintln!("nbdcrypt-keyd: warning: no audit checkpoint written: {e}");
    }
}

/// Prints `items` as JSON lines (`host list`, `token list`, `officer list`).
fn print_lines<T: serde::Serialize>(items: &[T]) {
    for i in items {
        println!("{}", serde_json::to_string(i).unwrap_or_default());
    }
}

fn run(cli: Cli) -> Result<(), KeydError> {
    let dir = &cli.data_dir;
    match &cli.cmd {
        Cmd::Init {
            server_names,
            cert_days,
        } => {
            let names = default_names(server_names);
            let root = match &cli.root_passphrase_file {
                Some(f) => RootSource::Passphrase(read_passphrase(f)?),
                None => RootSource::KeyFile,
            };
            let out = Store::init_valid(dir, &root, &names, &Validity::days(*cert_days))?;
            let mut store = Store::open(dir)?;
            let key = unlock(&cli, &store)?;
            seal(&mut store, &key);
            // The token alone on stdout (`T=$(nbdcrypt-keyd init)`), the sentences on stderr.
            eprintln!("store created in {}", dir.display());
            eprintln!(
                "CA certificate: {}",
                dir.join(crate::keyservice::store::CA_FILE).display()
            );
            eprintln!("admin token (shown once, store it now):");
            println!("{}", &*out.admin_token);
        }
        Cmd::Serve(args) => {
            let limits = args.limits();
            let mut store = Store::open(dir)?;
            store.set_audit_policy(args.audit_policy());
            store.set_registration(args.registration);
            let root = unlock(&cli, &store)?;
            // The start checkpoint seals the log as the server finds it (and the rows of a
            // store made before checkpoints); failing it fails the start.
            store.audit_checkpoint(&root, "server")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|source| KeydError::Io {
                    path: "tokio runtime".into(),
                    source,
                })?;
            rt.block_on(server::serve(store, root, &args.listen, limits))?;
        }
        Cmd::Host { cmd } => {
            let mut store = Store::open(dir)?;
            match cmd {
                HostCmd::Add {
                    name,
                    out_dir,
                    cert_days,
                }
                | HostCmd::Renew {
                    name,
                    out_dir,
                    cert_days,
                } => {
                    let renew = matches!(cmd, HostCmd::Renew { .. });
                    let root = unlock(&cli, &store)?;
                    let ca = dir.join(crate::keyservice::store::CA_FILE);
                    let ca_pem =
                        std::fs::read(&ca).map_err(|source| KeydError::Io { path: ca, source })?;
                    let files = HostFiles {
                        dir: out_dir.clone(),
                    };
                    let v = Validity::days(*cert_days);
                    issue_host(&mut store, &root, name, &v, &files, &ca_pem, renew)?;
                    seal(&mut store, &root);
                    files.announce(name, *cert_days);
                    if renew {
                        println!("the previous certificate of host {name} is no longer accepted");
                    }
                }
                HostCmd::List => print_lines(&store.host_list()?),
                HostCmd::Remove { name } => {
                    store.host_remove(name)?;
                    println!("host {name} removed");
                }
                HostCmd::Revoke { name } => {
                    store.host_revoke(name)?;
                    println!("host {name} revoked");
                }
                HostCmd::JoinToken {
                    name,
                    ttl,
                    cert_days,
                } => {
                    let t = store.join_token_add_days(name, *ttl, *cert_days)?;
                    eprintln!("join token for host {name}, valid {ttl} s (shown once):");
                    println!("{}", &*t);
                }
            }
        }
        Cmd::ServerCert { cmd } => {
            let mut store = Store::open(dir)?;
            let root = unlock(&cli, &store)?;
            certs::server_cert(cmd, &mut store, &root)?;
            seal(&mut store, &root);
        }
        Cmd::Volume { cmd } => volumes::run(cmd, &mut Store::open(dir)?)?,
        Cmd::Token { cmd } => {
            let mut store = Store::open(dir)?;
            match cmd {
                TokenCmd::Add { name, role } => {
                    let t = store.token_add(name, *role)?;
                    println!("{}", &*t);
                }
                TokenCmd::Revoke { name } => {
                    store.token_revoke(name)?;
                    println!("token {name} revoked");
                }
                TokenCmd::List => print_lines(&store.token_list()?),
            }
        }
        Cmd::Kek { cmd } => {
            let mut store = Store::open(dir)?;
            match cmd {
                KekCmd::Create { name } => {
                    let root = unlock(&cli, &store)?;
                    store.kek_create(&root, name)?;
                    seal(&mut store, &root);
                    println!("KEK {name} version 1");
                }
                KekCmd::Rotate { name } => {
                    let root = unlock(&cli, &store)?;
                    let v = store.kek_rotate(&root, name)?;
                    seal(&mut store, &root);
                    println!("KEK {name} version {v}");
                }
                KekCmd::Show { name } => {
                    let info = store.kek_show(name)?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&info).unwrap_or_default()
                    );
                }
                KekCmd::Set {
                    name,
                    min_unwrap_version,
                } => {
                    store.kek_set_min_unwrap(name, *min_unwrap_version)?;
                    println!("KEK {name}: min-unwrap-version {min_unwrap_version}");
                }
            }
        }
        Cmd::Officer { cmd } => {
            let mut store = Store::open(dir)?;
            match cmd {
                OfficerCmd::Add { name, recipient } => {
                    store.officer_add(name, recipient)?;
                    println!("officer {name} added");
                }
                OfficerCmd::List => print_lines(&store.officer_list()?),
                OfficerCmd::Remove { name } => {
                    store.officer_remove(name)?;
                    println!("officer {name} removed");
                }
            }
        }
        Cmd::Join {
            url,
            token,
            token_file,
            ca,
            out,
            timeout,
        } => {
            let token = match (token, token_file) {
                (_, Some(f)) => {
                    crate::keyservice::token_file::read_token_file(f).map_err(KeydError::Join)?
                }
                (Some(t), None) => zeroize::Zeroizing::new(t.clone()),
                (None, None) => unreachable!("clap requires --token or --token-file"),
            };
            join(url, &token, ca, out, *timeout)?
        }
        Cmd::Audit { cmd } => audit::run(&cli, cmd)?,
    }
    Ok(())
}

/// Runs `nbdcrypt-keyd` with the process arguments; returns the exit status.
pub fn main() -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NBDCRYPT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or the journal gets plain text, as nbdcrypt's.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    // The root key and KEKs live in this process: no core file, no ptrace or /proc/PID/mem
    // by same-user processes, and (where allowed) no swap.
    if let Err(e) = crate::crypto::secret::make_non_dumpable() {
        tracing::warn!(
            "could not make the process non-dumpable ({e}): a core file could hold keys"
        );
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if matches!(
        cli.cmd,
        Cmd::Init { .. }
            | Cmd::Serve(_)
            | Cmd::Host {
                cmd: HostCmd::Add { .. } | HostCmd::Renew { .. }
            }
            | Cmd::ServerCert { .. }
            | Cmd::Kek {
                cmd: KekCmd::Create { .. } | KekCmd::Rotate { .. }
            }
            | Cmd::Audit {
                cmd: AuditCmd::Prune { .. } | AuditCmd::Checkpoint { new: true }
            }
    ) {
        crate::crypto::secret::lock_all_memory();
    }
    // The administration commands end quietly on a closed pipe (`audit list | head`); `serve`
    // and `join` keep SIGPIPE ignored, so a peer's hang-up is an EPIPE error on their sockets
    // (rustls writes with writev, which has no MSG_NOSIGNAL), never a silent death.
    if !matches!(cli.cmd, Cmd::Serve { .. } | Cmd::Join { .. }) {
        crate::sigpipe::quiet_on_closed_pipe();
    }
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("nbdcrypt-keyd: {e}");
            1
        }
    }
}
