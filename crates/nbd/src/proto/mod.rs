//! Pure codec for the NBD wire protocol: constants, option and request parsing, reply
//! encoding, error values. No I/O happens here; [`crate::session`] moves the bytes. All
//! integers are big-endian ("network byte order", proto.md "Conventions"). Section names refer
//! to `doc/proto.md` of NetworkBlockDevice/nbd.
//!
//! One file per phase, every item re-exported here (callers write `proto::X`):
//! - [`options`]: the handshake's greeting, option headers, option data and option replies;
//! - [`request`]: transmission requests, transmission flags and the verdict on a request;
//! - [`reply`]: simple and structured replies and `base:allocation` extents;
//! - [`errno`]: the NBD error values ([`Errno`]);
//! - [`common`]: the malformed-message error ([`ProtoError`]) and the string limit.

pub mod common;
pub mod errno;
pub mod options;
pub mod reply;
pub mod request;

pub use common::*;
pub use errno::*;
pub use options::*;
pub use reply::*;
pub use request::*;
