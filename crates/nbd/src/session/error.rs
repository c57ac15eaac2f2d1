//! How a session ends: normally ([`SessionEnd`]) or on a failure that affects only this
//! connection ([`SessionError`]).

use std::io;

use thiserror::Error;

use crate::proto::ProtoError;

/// How a session ended without a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent `NBD_OPT_ABORT` (proto.md "Termination of the session during option
    /// haggling").
    Aborted,
    /// The client sent `NBD_CMD_DISC`; in-flight requests were finished and the export flushed.
    Disconnected,
    /// The client closed the connection between messages.
    ClientClosed,
    /// The server is shutting down; in-flight requests were finished and the export flushed.
    Shutdown,
    /// The client sent no request for the idle limit while nothing was in flight
    /// ([`SessionOptions::idle_limit`](super::SessionOptions::idle_limit)); the export was
    /// flushed.
    Idle,
    /// Still in the handshake, silent, and evicted for a newcomer when every handshake slot
    /// was taken ([`crate::admission`]).
    Evicted,
    /// GO or EXPORT_NAME chose an export but every established slot was taken
    /// (`--max-connections`): GO was answered `NBD_REP_ERR_POLICY`, and the connection closed.
    Refused,
}

/// Why a session ended abnormally. Only this connection is affected.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Socket error, including the client hanging up in the middle of a message.
    #[error("connection I/O: {0}")]
    Io(#[from] io::Error),
    /// Client flags with bits this server does not know (MUST close; proto.md "Newstyle
    /// negotiation").
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// A malformed message that desynchronises the stream (bad option or request magic).
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtoError),
    /// `NBD_OPT_EXPORT_NAME` for an export that does not exist (MUST terminate the session).
    #[error("EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    /// An option whose declared data length is too large even to discard.
    #[error("option {opt} declares {len} bytes of data")]
    OptionTooLarge {
        /// The option number.
        opt: u32,
        /// Declared data length in bytes.
        len: u32,
    },
    /// A non-fixed-newstyle client sent an option other than `EXPORT_NAME`.
    #[error("option {0} from a client without fixed newstyle")]
    NotFixedNewstyle(u32),
    /// A WRITE whose declared payload is too large even to discard.
    #[error("WRITE declares a {0}-byte payload")]
    WriteTooLarge(u32),
    /// `NBD_OPT_EXPORT_NAME` before `STARTTLS` on a server that requires TLS (cannot be
    /// answered with an error: MUST terminate; proto.md "FORCEDTLS mode").
    #[error("EXPORT_NAME without TLS on a server that requires TLS")]
    TlsRequired,
    /// The TLS handshake after `STARTTLS` failed (no or untrusted client certificate, a client
    /// speaking plain text, garbage, ...); too late to continue without TLS, so the session
    /// ends (proto.md "FORCEDTLS mode").
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] io::Error),
    /// The handshake took longer than [`SessionOptions::handshake_limit`](super::SessionOptions::handshake_limit).
    #[error("handshake not finished within {} s", .0.as_secs_f64())]
    HandshakeTimeout(std::time::Duration),
}
