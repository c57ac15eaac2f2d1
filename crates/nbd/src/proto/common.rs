//! What both protocol phases share: the error for a malformed client message and the string
//! length limit (proto.md "Conventions").

use thiserror::Error;

/// Longest string (export name, description) accepted or sent, in bytes (proto.md "Conventions":
/// strings MUST be no longer than 4096 bytes).
pub const MAX_STRING: usize = 4096;

/// A malformed message from the client. The session decides whether it costs an option error
/// reply or the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    /// An option header did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#x}")]
    BadOptionMagic(u64),
    /// A request header did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#x}")]
    BadRequestMagic(u32),
    /// Option data shorter than its fixed fields, or a length field pointing past its end.
    #[error("malformed option data: {0}")]
    Malformed(&'static str),
    /// A string longer than [`MAX_STRING`] bytes.
    #[error("string of {0} bytes exceeds the 4096-byte limit")]
    StringTooLong(usize),
}
