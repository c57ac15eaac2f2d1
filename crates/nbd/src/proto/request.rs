//! The transmission phase's requests (proto.md "Transmission", "Request message", "Request
//! types", "Command flags", "Transmission flags", "Error values"): the request header codec,
//! the transmission flags an export advertises, and [`check_request`], the verdict on a request
//! from its header alone. No I/O.

use super::common::ProtoError;
use super::errno::Errno;

/// Magic of a 28-byte request (proto.md "Request message").
pub const REQUEST_MAGIC: u32 = 0x2560_9513;

/// Transmission flag `NBD_FLAG_HAS_FLAGS` (proto.md "Transmission flags").
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag `NBD_FLAG_READ_ONLY`.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag `NBD_FLAG_SEND_FLUSH`.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag `NBD_FLAG_SEND_FUA`.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag `NBD_FLAG_SEND_TRIM`.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag `NBD_FLAG_SEND_WRITE_ZEROES`.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag `NBD_FLAG_SEND_DF`: MUST be clear unless structured replies were
/// negotiated (proto.md "Transmission flags").
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag `NBD_FLAG_CAN_MULTI_CONN`.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag `NBD_FLAG_SEND_CACHE`.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag `NBD_FLAG_SEND_FAST_ZERO`.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Command flag `NBD_CMD_FLAG_FUA` (proto.md "Command flags").
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag `NBD_CMD_FLAG_NO_HOLE` (valid on WRITE_ZEROES only).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag `NBD_CMD_FLAG_DF` (READ only, and only after structured replies).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag `NBD_CMD_FLAG_REQ_ONE` (BLOCK_STATUS only).
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag `NBD_CMD_FLAG_FAST_ZERO` (WRITE_ZEROES only).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Largest READ/WRITE payload served, in bytes: 32 MiB, the default maximum payload
/// (proto.md "Block size constraints"); advertised as the BLOCK_SIZE maximum.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`, in bytes (at least the minimum).
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest oversize WRITE payload (> [`MAX_PAYLOAD`]) the server reads and discards before
/// answering `EINVAL`; above it the connection is closed.
pub const MAX_WRITE_DISCARD: u32 = 64 << 20;
/// Length of a request header (proto.md "Request message").
pub const REQUEST_LEN: usize = 28;

/// What the client negotiated during option haggling that changes the transmission phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: READ replies (and, in this server, every
    /// reply) are structured (proto.md "Structured reply chunk message").
    pub structured: bool,
    /// `base:allocation` is selected by `NBD_OPT_SET_META_CONTEXT`, with id
    /// [`BASE_ALLOCATION_ID`](super::BASE_ALLOCATION_ID); `NBD_CMD_BLOCK_STATUS` is allowed (proto.md "Metadata querying").
    pub base_allocation: bool,
}

/// Transmission flags for an export (proto.md "Transmission flags"), computed per session:
/// `HAS_FLAGS`, `SEND_FLUSH`, `SEND_FUA`, `SEND_TRIM` (what TRIM does is the export's discard
/// policy),
/// `SEND_WRITE_ZEROES`, `CAN_MULTI_CONN` (no per-connection cache: every connection writes the
/// same file and FLUSH syncs all of it), `SEND_CACHE`, `SEND_FAST_ZERO` (always answered
/// `ENOTSUP`), plus `READ_ONLY` when `read_only` (then without `SEND_TRIM`,
/// `SEND_WRITE_ZEROES` and `SEND_FAST_ZERO`, which a read-only export can only refuse, as
/// qemu-nbd and nbdkit do; sent anyway they get `EPERM`) and `SEND_DF` only when `structured`
/// (the spec says it MUST be clear without structured replies).
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_CAN_MULTI_CONN
        | TFLAG_SEND_CACHE
        | TFLAG_SEND_FAST_ZERO;
    if read_only {
        f |= TFLAG_READ_ONLY;
        f &= !(TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO);
    }
    if structured {
        f |= TFLAG_SEND_DF;
    }
    f
}

/// Request types this server knows (proto.md "Request types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1), followed by `length` bytes of payload.
    Write,
    /// `NBD_CMD_DISC` (2): soft disconnect, no reply.
    Disc,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4): a hint, passed to the export (`BlockExport::trim`).
    Trim,
    /// `NBD_CMD_CACHE` (5): advisory prefetch, served as a no-op.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// Any other type: answered `EINVAL`.
    Unknown(u16),
}

impl Command {
    fn from_wire(t: u16) -> Command {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// Command flags valid for this command in this session (FUA is accepted on every
    /// command since `SEND_FUA` is advertised; `DF` only once `SEND_DF` was, i.e. after
    /// structured replies; proto.md "Command flags").
    fn allowed_flags(self, neg: &Negotiated) -> u16 {
        match self {
            Command::Read if neg.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => CMD_FLAG_FUA,
        }
    }
}

/// A parsed 28-byte request header (proto.md "Request message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`), not yet validated.
    pub flags: u16,
    /// Command type.
    pub command: Command,
    /// Opaque cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Offset into the export, in bytes.
    pub offset: u64,
    /// Length in bytes; for WRITE also the payload length that follows the header.
    pub length: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire (WRITE only), whatever the
    /// verdict: they must be consumed to keep the stream in sync.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    /// Whether `NBD_CMD_FLAG_FUA` is set.
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

/// Parse a request header. Errors: [`ProtoError::BadRequestMagic`] (the stream is then out of
/// sync and the connection must be closed).
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let magic = u32::from_be_bytes(b[0..4].try_into().unwrap());
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: Command::from_wire(u16::from_be_bytes([b[6], b[7]])),
        cookie: u64::from_be_bytes(b[8..16].try_into().unwrap()),
        offset: u64::from_be_bytes(b[16..24].try_into().unwrap()),
        length: u32::from_be_bytes(b[24..28].try_into().unwrap()),
    })
}

/// What to do with a request, decided from the header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it (for WRITE, read the payload first). Zero-length READ/WRITE/WRITE_ZEROES are
    /// served as no-ops.
    Serve,
    /// Consume the payload, if any, then reply with this error value.
    Error(Errno),
    /// Close the connection: a WRITE payload too large to even discard
    /// (> [`MAX_WRITE_DISCARD`]), treated as a denial of service.
    Close,
    /// `NBD_CMD_DISC`: finish in-flight requests, flush, close; no reply.
    Disconnect,
}

/// Validate a request against the export and what the session negotiated (proto.md "Error
/// values", "Request types", "Block size constraints", "Metadata querying"):
/// oversize WRITE payload → [`Verdict::Close`] above [`MAX_WRITE_DISCARD`], else `EINVAL`;
/// unknown command, unknown or inapplicable flag (`DF` without structured replies),
/// READ/WRITE over [`MAX_PAYLOAD`], offset + length overflowing u64 → `EINVAL`;
/// BLOCK_STATUS without structured replies or without a selected context, or of length 0
/// (a reply needs a non-empty extent) → `EINVAL`;
/// WRITE/WRITE_ZEROES/TRIM on a read-only export → `EPERM`; WRITE/WRITE_ZEROES past the end →
/// `ENOSPC`; READ/TRIM/CACHE/BLOCK_STATUS past the end → `EINVAL`; a valid WRITE_ZEROES with
/// `FAST_ZERO` → `ENOTSUP` (our zeroing encrypts zeroes, which is no faster than a write).
/// FLUSH ignores offset and length. Unaligned ranges are served (the export does
/// read-modify-write). TRIM and CACHE have no payload, so they are not limited to
/// [`MAX_PAYLOAD`].
pub fn check_request(
    req: &Request,
    export_size: u64,
    read_only: bool,
    neg: &Negotiated,
) -> Verdict {
    if req.command == Command::Write && req.length > MAX_WRITE_DISCARD {
        return Verdict::Close;
    }
    let cmd = req.command;
    if let Command::Unknown(_) = cmd {
        return Verdict::Error(Errno::Einval);
    }
    if cmd == Command::Disc {
        return Verdict::Disconnect;
    }
    if req.flags & !cmd.allowed_flags(neg) != 0 {
        return Verdict::Error(Errno::Einval);
    }
    if cmd == Command::Flush {
        return Verdict::Serve;
    }
    if cmd == Command::BlockStatus && !(neg.structured && neg.base_allocation) {
        return Verdict::Error(Errno::Einval);
    }
    if matches!(cmd, Command::Read | Command::Write) && req.length > MAX_PAYLOAD {
        return Verdict::Error(Errno::Einval);
    }
    let writes = matches!(cmd, Command::Write | Command::WriteZeroes | Command::Trim);
    if writes && read_only {
        return Verdict::Error(Errno::Eperm);
    }
    let end = match req.offset.checked_add(u64::from(req.length)) {
        Some(e) => e,
        None => return Verdict::Error(Errno::Einval),
    };
    if end > export_size {
        let enospc = matches!(cmd, Command::Write | Command::WriteZeroes);
        return Verdict::Error(if enospc { Errno::Enospc } else { Errno::Einval });
    }
    if cmd == Command::BlockStatus && req.length == 0 {
        return Verdict::Error(Errno::Einval);
    }
    if cmd == Command::WriteZeroes && req.flags & CMD_FLAG_FAST_ZERO != 0 {
        return Verdict::Error(Errno::Enotsup);
    }
    Verdict::Serve
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    #[test]
    fn request_roundtrip_and_bad_magic() {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&1u16.to_be_bytes());
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        b[8..16].copy_from_slice(&42u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(r, req(Command::Write, 1, 4096, 512).with_cookie(42));
        b[0] = 0;
        assert!(matches!(
            parse_request(&b),
            Err(ProtoError::BadRequestMagic(_))
        ));
    }

    impl Request {
        fn with_cookie(mut self, c: u64) -> Self {
            self.cookie = c;
            self
        }
    }

    #[test]
    fn request_verdicts() {
        let size = 1 << 20;
        let none = Negotiated::default();
        let v = |r: Request, ro: bool| check_request(&r, size, ro, &none);
        assert_eq!(v(req(Command::Read, 0, 0, 512), false), Verdict::Serve);
        assert_eq!(
            v(req(Command::Read, 0, size - 512, 1024), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Write, 0, size - 512, 1024), false),
            Verdict::Error(Errno::Enospc)
        );
        assert_eq!(
            v(req(Command::WriteZeroes, 0, size, 1), false),
            Verdict::Error(Errno::Enospc)
        );
        assert_eq!(
            v(req(Command::Write, 0, 0, 512), true),
            Verdict::Error(Errno::Eperm)
        );
        assert_eq!(
            v(req(Command::WriteZeroes, 0, 0, 512), true),
            Verdict::Error(Errno::Eperm)
        );
        assert_eq!(v(req(Command::Flush, 0, 0, 0), true), Verdict::Serve);
        assert_eq!(v(req(Command::Read, 0, 0, 512), true), Verdict::Serve);
        assert_eq!(
            v(req(Command::Read, 0, u64::MAX, 2), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Write, 0, u64::MAX - 1, 4), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Unknown(0x42), 0, 0, 512), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Read, 0x8000, 0, 512), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_NO_HOLE, 0, 512), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_FUA, 0, 512), false),
            Verdict::Serve
        );
        assert_eq!(
            v(
                req(
                    Command::WriteZeroes,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
                    0,
                    512
                ),
                false
            ),
            Verdict::Serve
        );
        assert_eq!(v(req(Command::Read, 0, 0, 0), false), Verdict::Serve);
        assert_eq!(
            v(req(Command::Read, 0, 0, MAX_PAYLOAD + 1), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Write, 0, 0, MAX_PAYLOAD + 1), false),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Write, 0, 0, u32::MAX), false),
            Verdict::Close
        );
        assert_eq!(v(req(Command::Write, 0, 0, u32::MAX), true), Verdict::Close);
        assert_eq!(v(req(Command::Disc, 0, 0, 0), false), Verdict::Disconnect);
        let big_zero = req(Command::WriteZeroes, 0, 0, u32::MAX);
        assert_eq!(
            check_request(&big_zero, 1 << 33, false, &none),
            Verdict::Serve
        );
    }

    #[test]
    fn flags_depend_on_structured_replies() {
        let plain = transmission_flags(false, false);
        assert_eq!(plain, 0xd6d);
        assert_eq!(plain & TFLAG_SEND_DF, 0, "DF MUST be clear without SR");
        assert_eq!(transmission_flags(false, true), 0xd6d | TFLAG_SEND_DF);
        let ro = transmission_flags(true, true);
        assert_eq!(ro & TFLAG_READ_ONLY, TFLAG_READ_ONLY);
        assert_eq!(
            ro & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO),
            0,
            "a read-only export advertises no write-like command"
        );
        assert_eq!(ro & TFLAG_SEND_FLUSH, TFLAG_SEND_FLUSH);
    }

    #[test]
    fn verdicts_of_new_commands() {
        let size = 1 << 20;
        let none = Negotiated::default();
        let sr = Negotiated {
            structured: true,
            base_allocation: false,
        };
        let ctx = Negotiated {
            structured: true,
            base_allocation: true,
        };
        let v = |r: Request, ro: bool, n: &Negotiated| check_request(&r, size, ro, n);
        // DF only after SR
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_DF, 0, 512), false, &none),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_DF, 0, 512), false, &sr),
            Verdict::Serve
        );
        // TRIM: bounds EINVAL, read-only EPERM, no payload limit
        assert_eq!(
            v(req(Command::Trim, 0, 0, 512), false, &none),
            Verdict::Serve
        );
        assert_eq!(
            v(req(Command::Trim, 0, size - 512, 1024), false, &none),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Trim, 0, 0, 512), true, &none),
            Verdict::Error(Errno::Eperm)
        );
        assert_eq!(
            check_request(&req(Command::Trim, 0, 0, u32::MAX), 1 << 33, false, &none),
            Verdict::Serve
        );
        // CACHE: read-only fine, bounds EINVAL, unknown flag EINVAL
        assert_eq!(
            v(req(Command::Cache, 0, 0, 512), true, &none),
            Verdict::Serve
        );
        assert_eq!(
            v(req(Command::Cache, 0, size, 1), false, &none),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(req(Command::Cache, CMD_FLAG_NO_HOLE, 0, 1), false, &none),
            Verdict::Error(Errno::Einval)
        );
        // FAST_ZERO → ENOTSUP after the other checks
        assert_eq!(
            v(
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 512),
                false,
                &none
            ),
            Verdict::Error(Errno::Enotsup)
        );
        assert_eq!(
            v(
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 512),
                true,
                &none
            ),
            Verdict::Error(Errno::Eperm)
        );
        assert_eq!(
            v(
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, size, 512),
                false,
                &none
            ),
            Verdict::Error(Errno::Enospc)
        );
        // BLOCK_STATUS needs SR and a context, stays in bounds, is not empty
        let bs = |f, o, l| req(Command::BlockStatus, f, o, l);
        assert_eq!(
            v(bs(0, 0, 512), false, &none),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(v(bs(0, 0, 512), false, &sr), Verdict::Error(Errno::Einval));
        assert_eq!(v(bs(0, 0, 512), true, &ctx), Verdict::Serve);
        assert_eq!(v(bs(CMD_FLAG_REQ_ONE, 0, 512), false, &ctx), Verdict::Serve);
        assert_eq!(
            v(bs(CMD_FLAG_DF, 0, 512), false, &ctx),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(
            v(bs(0, size - 512, 1024), false, &ctx),
            Verdict::Error(Errno::Einval)
        );
        assert_eq!(v(bs(0, 0, 0), false, &ctx), Verdict::Error(Errno::Einval));
        // REQ_ONE is for BLOCK_STATUS only
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_REQ_ONE, 0, 512), false, &ctx),
            Verdict::Error(Errno::Einval)
        );
    }
}
