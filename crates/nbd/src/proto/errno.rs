//! NBD error values (proto.md "Error values"): the only numbers that may go in the error
//! field of a simple reply or an `NBD_REPLY_TYPE_ERROR` chunk, the text this server sends with
//! each, and the one mapping from an export's [`std::io::Error`] to them.

use std::io;

/// An NBD error value (proto.md "Error values"); the discriminant is the value on the wire.
///
/// Not the host's `errno`: the protocol fixes these numbers, and only they may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Errno {
    /// `NBD_EPERM` (1): a write-like request on a read-only export.
    Eperm = 1,
    /// `NBD_EIO` (5): the export failed (any I/O error but a full disk, or a panic).
    Eio = 5,
    /// `NBD_ENOMEM` (12): the server SHOULD NOT send it "if at all possible"; never sent here
    /// (an export's `ENOMEM` goes out as [`Errno::Eio`]).
    Enomem = 12,
    /// `NBD_EINVAL` (22): bad command, flag, range or state.
    Einval = 22,
    /// `NBD_ENOSPC` (28): a write past the end of the export, or a full disk or quota.
    Enospc = 28,
    /// `NBD_EOVERFLOW` (75): only for `DF` reads or payload limits of the spec; never sent
    /// here (a `DF` READ is always one chunk).
    Eoverflow = 75,
    /// `NBD_ENOTSUP` (95): only for `NBD_CMD_FLAG_FAST_ZERO`.
    Enotsup = 95,
    /// `NBD_ESHUTDOWN` (108): the server is shutting down; never sent here (a shutdown
    /// finishes in-flight requests and reads no more).
    Eshutdown = 108,
}

impl Errno {
    /// The value on the wire (u32, big-endian when encoded).
    #[inline]
    pub const fn value(self) -> u32 {
        self as u32
    }

    /// The short human-readable text sent in `NBD_REPLY_TYPE_ERROR` chunks.
    pub const fn message(self) -> &'static str {
        match self {
            Errno::Eperm => "export is read-only",
            Errno::Eio => "I/O error on the export",
            Errno::Einval => "invalid request (bad command, flags, range or state)",
            Errno::Enospc => "request extends past the end of the export",
            Errno::Enotsup => "fast zeroing is not supported",
            Errno::Enomem | Errno::Eoverflow | Errno::Eshutdown => "request failed",
        }
    }
}

impl From<&io::Error> for Errno {
    /// An export's failure as an NBD error value: a full disk or quota (`ENOSPC`, `EDQUOT`) is
    /// [`Errno::Enospc`], anything else [`Errno::Eio`] (including `ENOMEM`, which proto.md says
    /// a server SHOULD NOT send).
    fn from(e: &io::Error) -> Errno {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Errno::Enospc,
            _ => Errno::Eio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_protocol_numbers() {
        let table = [
            (Errno::Eperm, 1),
            (Errno::Eio, 5),
            (Errno::Enomem, 12),
            (Errno::Einval, 22),
            (Errno::Enospc, 28),
            (Errno::Eoverflow, 75),
            (Errno::Enotsup, 95),
            (Errno::Eshutdown, 108),
        ];
        for (e, v) in table {
            assert_eq!(e.value(), v, "{e:?}");
        }
    }

    #[test]
    fn io_errors_map_to_enospc_or_eio() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(Errno::from(&os(libc::ENOSPC)), Errno::Enospc);
        assert_eq!(Errno::from(&os(libc::EDQUOT)), Errno::Enospc);
        assert_eq!(Errno::from(&os(libc::EIO)), Errno::Eio);
        assert_eq!(Errno::from(&os(libc::ENOMEM)), Errno::Eio);
        assert_eq!(Errno::from(&os(libc::EPERM)), Errno::Eio);
        let custom = io::Error::other("no os error");
        assert_eq!(Errno::from(&custom), Errno::Eio);
    }

    #[test]
    fn messages() {
        assert_eq!(Errno::Eperm.message(), "export is read-only");
        assert_eq!(Errno::Enotsup.message(), "fast zeroing is not supported");
        assert_eq!(Errno::Eshutdown.message(), "request failed");
    }
}
