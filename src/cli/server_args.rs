//! Where and how `open`, `serve` and `demo` listen: the listener flags ([`ServerFlags`],
//! clap), the TLS flags and the rules that turn them into the server's TLS configuration
//! ([`TlsArgs`]), and the checked settings the serving code takes ([`ServerArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::nbd::{TlsConfig, TlsFiles, TlsMode};

use super::error::CliError;

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
    /// `--max-handshakes`, `--idle-limit`, `--max-buffered`.
    pub bounds: BoundsFlags,
    /// `--tls`, `--tls-cert`, `--tls-key`, `--tls-ca`.
    pub tls: TlsArgs,
    /// `--fork`: run in the background once listening (`daemon.rs`).
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

/// Parse `--tls MODE`: off, on or require.
fn parse_tls_mode(s: &str) -> Result<TlsMode, String> {
    s.parse()
}

/// Refuse a TLS mode that would serve clients without the certificate `--tls-ca` demands:
/// under [`TlsMode::On`] a client that never sends `STARTTLS` is served in plain text, so it
/// skips the certificate check. `has_ca`: `--tls-ca` is given.
pub fn check_client_auth(mode: TlsMode, has_ca: bool) -> Result<(), CliError> {
    if mode == TlsMode::On && has_ca {
        return Err(CliError::Usage(
            "--tls on serves plain-text clients without the certificate --tls-ca asks for: use --tls require (or drop --tls-ca)".into(),
        ));
    }
    Ok(())
}

impl TlsArgs {
    /// The mode these flags select, and the files when it is not off.
    ///
    /// Rules (as qemu-nbd, where giving TLS credentials means TLS is required): no flag → off;
    /// `--tls-cert` + `--tls-key` without `--tls` → require; `--tls on|require` needs both
    /// files; `--tls off` with any file, one file of the pair alone, or `--tls-ca` without the
    /// pair is a usage error rather than a silent plain-text server; so is `--tls on` with
    /// `--tls-ca` ([`check_client_auth`]).
    pub fn resolve(&self) -> Result<Option<(TlsMode, TlsFiles)>, CliError> {
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
        check_client_auth(mode, self.tls_ca.is_some())?;
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
    pub fn load(&self) -> Result<TlsConfig, CliError> {
        match self.resolve()? {
            None => Ok(TlsConfig::off()),
            Some((mode, files)) => Ok(TlsConfig::from_files(mode, &files)?),
        }
    }
}

/// The server's resource bounds beyond `--max-connections` (`open`, `serve` and `demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct BoundsFlags {
    /// Most connections still in the NBD handshake (under --tls require: not yet
    /// authenticated) at once, counted apart from --max-connections (0 = no limit). When all
    /// are taken, a newcomer replaces the handshake silent longest (1 s or more), else is
    /// closed at once.
    #[arg(long, value_name = "N", default_value_t = crate::nbd::DEFAULT_MAX_HANDSHAKES)]
    pub max_handshakes: usize,
    /// Close a connection that has sent no request for SECONDS while none of its requests
    /// was in flight (0 = never, the default, as qemu-nbd).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub idle_limit: u64,
    /// Most bytes of READ/WRITE buffers held by all connections together (e.g. 512M, 2G;
    /// smaller than 32M is raised to 32M), on top of 4 MiB guaranteed to each connection:
    /// past it the server stops reading requests from connections that want more until
    /// replies are sent. In all at most SIZE + 4 MiB x --max-connections. Default: a quarter
    /// of RAM, between 32 MiB and 2 GiB.
    #[arg(long, value_name = "SIZE", value_parser = super::args::parse_size)]
    pub max_buffered: Option<u64>,
}

impl Default for BoundsFlags {
    /// The defaults of the flags.
    fn default() -> BoundsFlags {
        BoundsFlags {
            max_handshakes: crate::nbd::DEFAULT_MAX_HANDSHAKES,
            idle_limit: 0,
            max_buffered: None,
        }
    }
}

/// Listener and server flags shared by `open` and `serve`.
#[derive(clap::Args)]
pub struct ServerFlags {
    /// TCP address to listen on (repeatable); default 127.0.0.1:10809 unless --socket is given
    /// or the sockets come from systemd socket activation (LISTEN_FDS).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Unix socket to listen on (repeatable).
    #[arg(long, value_name = "PATH")]
    pub socket: Vec<PathBuf>,
    /// Write the process id to FILE once every socket accepts connections; removed at exit.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Run in the background once every socket accepts connections (and the pid file is
    /// written): the command returns 0 then, or the error's exit code if it fails before.
    #[arg(long)]
    pub fork: bool,
    /// Most client connections past the NBD handshake at once, over all sockets (0 = no
    /// limit); connections still negotiating count toward --max-handshakes instead. Over the
    /// limit, the client's GO is refused and the connection closed.
    #[arg(long, value_name = "N", default_value_t = crate::nbd::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Close a connection that has not finished the NBD handshake within SECONDS (0 = no
    /// limit), so clients that connect and stall cannot hold connection slots (as qemu-nbd).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::nbd::DEFAULT_HANDSHAKE_LIMIT.as_secs())]
    pub handshake_limit: u64,
    /// Serve READs and WRITEs of at most BYTES inline, on the task reading the connection's
    /// requests: no hand-off to the blocking thread pool (fastest when the image is in the
    /// page cache, on tmpfs or a fast SSD), but that connection's next requests wait
    /// meanwhile. 0 = off: every request on the thread pool, many at once per connection
    /// (better for images on slow disks or network storage).
    #[arg(long, value_name = "BYTES", default_value_t = crate::export::VOLUME_INLINE_LIMIT)]
    pub inline_limit: u32,
    #[command(flatten)]
    pub bounds: BoundsFlags,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ServerFlags {
    pub fn args(self) -> ServerArgs {
        ServerArgs {
            listen: self.listen,
            socket: self.socket,
            pid_file: self.pid_file,
            max_connections: self.max_connections,
            handshake_limit: self.handshake_limit,
            inline_limit: self.inline_limit,
            bounds: self.bounds,
            tls: self.tls,
            fork: self.fork,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_need_required_tls() {
        assert!(check_client_auth(TlsMode::On, true).is_err());
        assert!(check_client_auth(TlsMode::On, false).is_ok());
        assert!(check_client_auth(TlsMode::Require, true).is_ok());
        assert!(check_client_auth(TlsMode::Off, false).is_ok());
    }

    #[test]
    fn resolve_refuses_tls_on_with_a_ca() {
        let args = |mode| TlsArgs {
            tls: mode,
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_ca: Some("ca.pem".into()),
        };
        let e = args(Some(TlsMode::On)).resolve().unwrap_err();
        assert!(e.to_string().contains("--tls require"), "{e}");
        let (mode, files) = args(None).resolve().unwrap().unwrap();
        assert_eq!((mode, files.ca.is_some()), (TlsMode::Require, true));
        assert!(args(Some(TlsMode::Require)).resolve().is_ok());
    }
}
