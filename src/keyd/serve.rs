//! `nbdcrypt-keyd serve`'s flags (`docs/keyservice-api.md` "Connection bounds", "Audit log"):
//! the address, the connection bounds, turned into [`ServeLimits`], and the audit policy,
//! turned into [`AuditPolicy`].

use std::time::Duration;

use clap::Args;

use crate::keyservice::server::limits::DEFAULT_MAX_CONNECTIONS;
use crate::keyservice::server::ServeLimits;
use crate::keyservice::store::{AuditPolicy, Registration};

/// A timeout flag: 1 to 3600 seconds.
fn secs(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if (1..=3600).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 1 to 3600")),
    }
}

/// `serve`'s flags.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Open connections at most (lowered, with a warning, to the open-file limit minus 64; at
    /// the cap a newcomer evicts the connection stalled longest in its TLS handshake or first
    /// request header, if any for 1 s, else it is refused).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Seconds a client may take to complete the TLS handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = secs)]
    pub tls_handshake_timeout: u64,
    /// Seconds a client may take to send a complete request header, from when the server
    /// starts waiting for it (after the handshake or the previous reply).
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = secs)]
    pub header_read_timeout: u64,
    /// Seconds a connection may stay silent between requests before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = secs)]
    pub idle_timeout: u64,
    /// Sign an audit checkpoint once this many rows follow the last one.
    #[arg(long, value_name = "ROWS", default_value_t = 1000)]
    pub audit_checkpoint_rows: i64,
    /// Sign an audit checkpoint once this many seconds passed since the last one, if rows
    /// followed it.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub audit_checkpoint_secs: u64,
    /// Unauthenticated refusals of one source, action and kind within this many seconds
    /// after the first (written at once) are counted and written as one row.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub audit_refusal_window: u64,
    /// At most this many sources aggregated at once (the oldest is written out first).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub audit_refusal_sources: usize,
    /// Who registers volumes to hosts: `open` (the first host that registers a UUID owns it;
    /// `volume assign` gives a squatted one back) or `admin` (only `volume assign` does; a
    /// host may register only a volume assigned to it, so none can take a UUID first).
    #[arg(long, value_name = "WHO", default_value = "open", value_parser = registration)]
    pub registration: Registration,
}

/// `--registration`: `open` or `admin`.
fn registration(s: &str) -> Result<Registration, String> {
    match s {
        "open" => Ok(Registration::Open),
        "admin" => Ok(Registration::Admin),
        _ => Err(format!("{s:?} is neither open nor admin")),
    }
}

impl ServeArgs {
    /// The bounds these flags ask for (the cap is fitted to the descriptor limit by `serve`).
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            max_connections: self.max_connections,
            handshake_timeout: Duration::from_secs(self.tls_handshake_timeout),
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
        }
    }

    /// The audit policy these flags ask for.
    pub fn audit_policy(&self) -> AuditPolicy {
        AuditPolicy {
            checkpoint_rows: self.audit_checkpoint_rows,
            checkpoint_secs: self.audit_checkpoint_secs,
            refusal_window_secs: self.audit_refusal_window,
            refusal_sources: self.audit_refusal_sources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_bounds() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from(["serve"]).unwrap();
        assert_eq!(cli.serve.limits(), ServeLimits::default());
        assert!(Cli::try_parse_from(["serve", "--idle-timeout", "0"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--max-connections", "0"]).is_err());
    }
}
