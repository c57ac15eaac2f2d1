//! Pure codec for the NBD wire protocol: constants, option and request parsing, reply encoding.
//!
//! No I/O happens here; [`super::session`] moves the bytes. All integers are big-endian
//! ("network byte order", proto.md "Conventions"). Section names below refer to
//! `doc/proto.md` of NetworkBlockDevice/nbd.

use thiserror::Error;

/// `NBDMAGIC`, first 8 bytes the server sends (proto.md "Newstyle negotiation").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second server magic and the magic opening every client option
/// (proto.md "Newstyle negotiation").
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic opening every option reply (proto.md "Fixed newstyle negotiation").
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a 28-byte request (proto.md "Request message").
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a 16-byte simple reply (proto.md "Simple reply message").
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a 20-byte structured reply chunk header (proto.md "Structured reply chunk message").
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag `NBD_FLAG_FIXED_NEWSTYLE` (proto.md "Handshake flags").
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag `NBD_FLAG_NO_ZEROES` (proto.md "Handshake flags").
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE` (proto.md "Client flags").
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag `NBD_FLAG_C_NO_ZEROES` (proto.md "Client flags").
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit MUST close the connection
/// (proto.md "Newstyle negotiation").
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES;

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

/// Option `NBD_OPT_EXPORT_NAME` (proto.md "Option types").
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// Option `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// Option `NBD_OPT_STARTTLS` (proto.md "TLS support"; `ERR_UNSUP` when TLS is off).
pub const OPT_STARTTLS: u32 = 5;
/// Option `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// Option `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// Option `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option `NBD_OPT_EXTENDED_HEADERS` (experimental branch; answered `ERR_UNSUP`).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply `NBD_REP_ACK` (proto.md "Option reply types").
pub const REP_ACK: u32 = 1;
/// Option reply `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// Option reply `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// Option reply `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Error reply `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
/// Error reply `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
/// Error reply `NBD_REP_ERR_TLS_REQD` (FORCEDTLS: any option but `STARTTLS`/`ABORT` before
/// TLS; proto.md "FORCEDTLS mode").
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;
/// Error reply `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
/// Error reply `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

/// Information type `NBD_INFO_EXPORT` (proto.md "Option reply types", `NBD_REP_INFO`).
pub const INFO_EXPORT: u16 = 0;
/// Information type `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// Information type `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information type `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

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

/// Structured reply flag `NBD_REPLY_FLAG_DONE` (proto.md "Structured reply flags").
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply type `NBD_REPLY_TYPE_NONE` (proto.md "Structured reply types").
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply type `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply type `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured reply type `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply type `NBD_REPLY_TYPE_ERROR`.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// The one metadata context this server knows (proto.md "Metadata querying", "Metadata
/// contexts").
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Context id this server gives `base:allocation` in `NBD_REP_META_CONTEXT` replies to
/// `NBD_OPT_SET_META_CONTEXT` (`NBD_OPT_LIST_META_CONTEXT` replies use 0, as the spec asks).
pub const BASE_ALLOCATION_ID: u32 = 1;
/// `base:allocation` status flag `NBD_STATE_HOLE`: not allocated in the backing store
/// (proto.md "Metadata contexts").
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status flag `NBD_STATE_ZERO`: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// Most descriptors in one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk (the spec lets a server send
/// fewer than the whole range needs; the client asks again for the rest).
pub const MAX_EXTENTS: usize = 1024;

/// Error value `EPERM` (proto.md "Error values").
pub const EPERM: u32 = 1;
/// Error value `EIO`.
pub const EIO: u32 = 5;
/// Error value `EINVAL`.
pub const EINVAL: u32 = 22;
/// Error value `ENOSPC`.
pub const ENOSPC: u32 = 28;
/// Error value `ENOTSUP` (only for `NBD_CMD_FLAG_FAST_ZERO`).
pub const ENOTSUP: u32 = 95;

/// Longest string (export name, description) accepted or sent, in bytes (proto.md "Conventions":
/// strings MUST be no longer than 4096 bytes).
pub const MAX_STRING: usize = 4096;
/// Largest READ/WRITE payload served, in bytes: 32 MiB, the default maximum payload
/// (proto.md "Block size constraints"); advertised as the BLOCK_SIZE maximum.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`, in bytes (at least the minimum).
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest option payload read into memory, in bytes. Larger payloads are discarded (up to
/// [`MAX_OPTION_DISCARD`]) and answered `ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 64 << 10;
/// Largest option payload the server bothers to discard; above it the connection is closed
/// (a denial of service, proto.md "Termination of the session during option haggling").
pub const MAX_OPTION_DISCARD: u32 = 1 << 20;
/// Largest oversize WRITE payload (> [`MAX_PAYLOAD`]) the server reads and discards before
/// answering `EINVAL`; above it the connection is closed.
pub const MAX_WRITE_DISCARD: u32 = 64 << 20;

/// Length of the server greeting (NBDMAGIC, IHAVEOPT, u16 handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of a client option header (IHAVEOPT, u32 option, u32 length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request header (proto.md "Request message").
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header (proto.md "Simple reply message").
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header (proto.md "Structured reply chunk message").
pub const CHUNK_HEADER_LEN: usize = 20;

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

/// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags `FIXED_NEWSTYLE | NO_ZEROES`
/// (proto.md "Newstyle negotiation", "Handshake flags").
pub fn encode_greeting() -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// Client flags after the greeting. `Err(flags)` if any bit is unknown: the server MUST then
/// close (proto.md "Newstyle negotiation").
pub fn parse_client_flags(b: [u8; 4]) -> Result<u32, u32> {
    let f = u32::from_be_bytes(b);
    if f & !CLIENT_FLAGS_KNOWN != 0 {
        Err(f)
    } else {
        Ok(f)
    }
}

/// A client option header: option number and declared data length in bytes
/// (proto.md "Newstyle negotiation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*` value.
    pub opt: u32,
    /// Length of the option data that follows, in bytes (not yet validated).
    pub len: u32,
}

/// Parse the 16-byte option header. Errors: [`ProtoError::BadOptionMagic`].
pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = u64::from_be_bytes(b[0..8].try_into().unwrap());
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    Ok(OptionHeader {
        opt: u32::from_be_bytes(b[8..12].try_into().unwrap()),
        len: u32::from_be_bytes(b[12..16].try_into().unwrap()),
    })
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and requested information types
/// (proto.md "Option types", `NBD_OPT_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name as sent (bytes; `""` selects the default export).
    pub name: Vec<u8>,
    /// Requested `NBD_INFO_*` types, in order, possibly repeated or unknown.
    pub requests: Vec<u16>,
}

/// Parse `NBD_OPT_INFO`/`NBD_OPT_GO` data: u32 name length, name, u16 count, count × u16.
/// Errors: [`ProtoError::Malformed`] when a length does not match the data (the spec's
/// `ERR_INVALID` case), [`ProtoError::StringTooLong`] for names over 4096 bytes.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    if data.len() < 6 {
        return Err(ProtoError::Malformed("INFO/GO data shorter than 6 bytes"));
    }
    let name_len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
    if name_len > data.len() - 6 {
        return Err(ProtoError::Malformed("name length exceeds option data"));
    }
    if name_len > MAX_STRING {
        return Err(ProtoError::StringTooLong(name_len));
    }
    let name = data[4..4 + name_len].to_vec();
    let rest = &data[4 + name_len..];
    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let reqs = &rest[2..];
    if reqs.len() != n * 2 {
        return Err(ProtoError::Malformed(
            "information request count does not match data",
        ));
    }
    let requests = reqs
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// One option reply: magic, option, reply type, u32 length, data
/// (proto.md "Fixed newstyle negotiation").
pub fn encode_option_reply(opt: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&reply_type.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `NBD_REP_SERVER` data: u32 name length, name, then the description if any
/// (proto.md "Option reply types"; the trailing text is implementation-specific).
pub fn encode_rep_server(name: &str, description: Option<&str>) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    if let Some(d) = description {
        b.extend_from_slice(d.as_bytes());
    }
    b
}

/// `NBD_INFO_EXPORT` data (12 bytes): u16 type 0, u64 size in bytes, u16 transmission flags.
pub fn encode_info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` data (14 bytes): u16 type 3, u32 minimum, preferred, maximum payload,
/// all in bytes (proto.md "Block size constraints").
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` data: u16 type, then the string.
pub fn encode_info_string(info_type: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&info_type.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// Reply to `NBD_OPT_EXPORT_NAME`: u64 size, u16 transmission flags, then 124 zero bytes unless
/// the client set `NBD_FLAG_C_NO_ZEROES` (10 or 134 bytes; proto.md "Newstyle negotiation").
pub fn encode_export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        b.resize(134, 0);
    }
    b
}

/// What the client negotiated during option haggling that changes the transmission phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: READ replies (and, in this server, every
    /// reply) are structured (proto.md "Structured reply chunk message").
    pub structured: bool,
    /// `base:allocation` is selected by `NBD_OPT_SET_META_CONTEXT`, with id
    /// [`BASE_ALLOCATION_ID`]; `NBD_CMD_BLOCK_STATUS` is allowed (proto.md "Metadata querying").
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
    /// Consume the payload, if any, then reply with this `NBD_E*` error value.
    Error(u32),
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
        return Verdict::Error(EINVAL);
    }
    if cmd == Command::Disc {
        return Verdict::Disconnect;
    }
    if req.flags & !cmd.allowed_flags(neg) != 0 {
        return Verdict::Error(EINVAL);
    }
    if cmd == Command::Flush {
        return Verdict::Serve;
    }
    if cmd == Command::BlockStatus && !(neg.structured && neg.base_allocation) {
        return Verdict::Error(EINVAL);
    }
    if matches!(cmd, Command::Read | Command::Write) && req.length > MAX_PAYLOAD {
        return Verdict::Error(EINVAL);
    }
    let writes = matches!(cmd, Command::Write | Command::WriteZeroes | Command::Trim);
    if writes && read_only {
        return Verdict::Error(EPERM);
    }
    let end = match req.offset.checked_add(u64::from(req.length)) {
        Some(e) => e,
        None => return Verdict::Error(EINVAL),
    };
    if end > export_size {
        let enospc = matches!(cmd, Command::Write | Command::WriteZeroes);
        return Verdict::Error(if enospc { ENOSPC } else { EINVAL });
    }
    if cmd == Command::BlockStatus && req.length == 0 {
        return Verdict::Error(EINVAL);
    }
    if cmd == Command::WriteZeroes && req.flags & CMD_FLAG_FAST_ZERO != 0 {
        return Verdict::Error(ENOTSUP);
    }
    Verdict::Serve
}

/// A short human-readable text for an error value, sent in `NBD_REPLY_TYPE_ERROR` chunks.
pub fn error_message(err: u32) -> &'static str {
    match err {
        EPERM => "export is read-only",
        EIO => "I/O error on the export",
        EINVAL => "invalid request (bad command, flags, range or state)",
        ENOSPC => "request extends past the end of the export",
        ENOTSUP => "fast zeroing is not supported",
        _ => "request failed",
    }
}

/// Simple reply header: magic, u32 error, u64 cookie (proto.md "Simple reply message").
/// For a successful READ the data follows.
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Structured reply chunk header: magic, u16 flags, u16 type, u64 cookie, u32 payload length
/// (proto.md "Structured reply chunk message").
pub fn encode_chunk_header(
    flags: u16,
    rtype: u16,
    cookie: u64,
    len: u32,
) -> [u8; CHUNK_HEADER_LEN] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&rtype.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// The final `NBD_REPLY_TYPE_NONE` chunk (DONE set, no payload): success of a request whose
/// reply carries no data (proto.md "Structured reply types").
pub fn encode_none_chunk(cookie: u64) -> [u8; CHUNK_HEADER_LEN] {
    encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
}

/// Header and offset (28 bytes) of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk whose `data_len`
/// bytes of data follow; `done` sets `NBD_REPLY_FLAG_DONE` (only once the data is known good:
/// proto.md "Structured replies" under `NBD_CMD_READ`). `data_len` must be 1..=2^32 − 9.
pub fn encode_offset_data_header(cookie: u64, offset: u64, data_len: u32, done: bool) -> Vec<u8> {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + 8);
    b.extend_from_slice(&encode_chunk_header(
        flags,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len + 8,
    ));
    b.extend_from_slice(&offset.to_be_bytes());
    b
}

/// The chunks of a successful structured READ of `data` at `offset` (proto.md "Structured
/// reply types", `NBD_CMD_READ`): `OFFSET_HOLE` chunks for the parts that `extents` (from
/// `offset`, as [`block_status_descriptors`] takes them) report as reading zero (`STATE_ZERO`)
/// AND whose bytes in `data` are all zero, `OFFSET_DATA` chunks for the rest, in order,
/// neighbours of one kind merged, `DONE` on the last. Checking the bytes makes the reply right
/// even if the allocation changed between the read and the query. Returns `None` when the
/// whole read is data (the caller sends its single `OFFSET_DATA` chunk without copying).
/// `data` must be 1..=2^32 − 9 bytes.
pub fn encode_read_chunks(
    cookie: u64,
    offset: u64,
    data: &[u8],
    extents: &[Extent],
) -> Option<Vec<u8>> {
    let len = data.len() as u64;
    let mut runs: Vec<(u64, u64, bool)> = Vec::new(); // (start, length, hole) relative to offset
    let mut pos = 0u64;
    for e in extents.iter().filter(|e| e.length > 0) {
        if pos >= len {
            break;
        }
        let l = e.length.min(len - pos);
        let zero = e.status & STATE_ZERO != 0
            && data[pos as usize..(pos + l) as usize]
                .iter()
                .all(|&b| b == 0);
        match runs.last_mut() {
            Some(last) if last.2 == zero => last.1 += l,
            _ => runs.push((pos, l, zero)),
        }
        pos += l;
    }
    if pos < len {
        match runs.last_mut() {
            Some(last) if !last.2 => last.1 += len - pos,
            _ => runs.push((pos, len - pos, false)),
        }
    }
    if !runs.iter().any(|r| r.2) {
        return None;
    }
    let mut out = Vec::new();
    let n = runs.len();
    for (i, (start, l, hole)) in runs.into_iter().enumerate() {
        let done = i + 1 == n;
        if hole {
            let flags = if done { REPLY_FLAG_DONE } else { 0 };
            out.extend_from_slice(&encode_chunk_header(
                flags,
                REPLY_TYPE_OFFSET_HOLE,
                cookie,
                12,
            ));
            out.extend_from_slice(&(offset + start).to_be_bytes());
            out.extend_from_slice(&(l as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&encode_offset_data_header(
                cookie,
                offset + start,
                l as u32,
                done,
            ));
            out.extend_from_slice(&data[start as usize..(start + l) as usize]);
        }
    }
    Some(out)
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk (DONE set): u32 error, u16 message length, message.
pub fn encode_error_chunk(err: u32, cookie: u64, msg: &str) -> Vec<u8> {
    let msg = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + 6 + msg.len());
    b.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    ));
    b.extend_from_slice(&err.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// A final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk (DONE set): u32 context id, then
/// `(u32 length, u32 status flags)` descriptors (proto.md "Structured reply types").
pub fn encode_block_status_chunk(cookie: u64, context_id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + len);
    b.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len as u32,
    ));
    b.extend_from_slice(&context_id.to_be_bytes());
    for &(l, f) in extents {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

/// Length in bytes of the single `base:allocation` extent (status 0, "data") answering a
/// BLOCK_STATUS of `offset..offset + len` (validated: `0 < len`, end within `size`).
///
/// The whole range is reported as data whatever was written, so an encrypted volume does not
/// leak its usage. Rules (proto.md `NBD_CMD_BLOCK_STATUS`, "Block size constraints"): the
/// extent ends on a multiple of `min_block`; without `REQ_ONE` it may extend past the request
/// (rounded up, never past `size`, and at most what a u32 holds); with `REQ_ONE` it MUST NOT
/// exceed the request, so the end is rounded down, except for a request that does not even
/// reach the next block boundary (an unaligned query), which gets exactly `len`.
pub fn block_status_extent(offset: u64, len: u32, size: u64, min_block: u32, req_one: bool) -> u32 {
    let min = u64::from(min_block.max(1));
    let end = offset + u64::from(len);
    let ext_end = if req_one {
        let down = end / min * min;
        if down > offset {
            down
        } else {
            end
        }
    } else {
        let up = end.div_ceil(min) * min;
        let mut e = up.min(size).max(end);
        if e - offset > u64::from(u32::MAX) {
            e = (offset + u64::from(u32::MAX)) / min * min;
        }
        e
    };
    (ext_end - offset) as u32
}

/// A run of the export with one `base:allocation` status, as an export reports it
/// (`BlockExport::block_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub length: u64,
    /// Status flags ([`STATE_HOLE`], [`STATE_ZERO`]; 0 = data, always safe).
    pub status: u32,
}

/// The `(length, status)` descriptors answering a BLOCK_STATUS of `offset..offset + len`
/// (validated: `0 < len`, end within `size`) from the export's `extents`, which start at
/// `offset` (proto.md `NBD_CMD_BLOCK_STATUS`, "Structured reply types").
///
/// Extents are clipped to the request, empty ones dropped, equal neighbours merged, and at
/// most [`MAX_EXTENTS`] kept (one with `req_one`). When the descriptors reach the end of the
/// request, the last one is sized by [`block_status_extent`] (the whole-range rules: ends on
/// a `min_block` multiple, past the request only without `REQ_ONE`); an export reporting one
/// data extent therefore gets exactly the single all-data answer. No extents → one data
/// descriptor (status 0 is always safe).
pub fn block_status_descriptors(
    offset: u64,
    len: u32,
    extents: &[Extent],
    size: u64,
    min_block: u32,
    req_one: bool,
) -> Vec<(u32, u32)> {
    let end = offset + u64::from(len);
    let max = if req_one { 1 } else { MAX_EXTENTS };
    let mut out: Vec<(u64, u64, u32)> = Vec::new(); // (offset, length, status)
    let mut pos = offset;
    for e in extents.iter().filter(|e| e.length > 0) {
        if pos >= end {
            break;
        }
        let l = e.length.min(end - pos);
        let n = out.len();
        match out.last_mut() {
            Some(last) if last.2 == e.status => last.1 += l,
            _ if n == max => break,
            _ => out.push((pos, l, e.status)),
        }
        pos += l;
    }
    if out.is_empty() {
        out.push((offset, u64::from(len), 0));
        pos = end;
    }
    if pos >= end {
        let last = out.last_mut().expect("not empty");
        last.1 = u64::from(block_status_extent(
            last.0,
            last.1 as u32,
            size,
            min_block,
            req_one,
        ));
    }
    out.into_iter().map(|(_, l, s)| (l as u32, s)).collect()
}

/// Data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` (proto.md "Option types"):
/// export name and queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name as sent (`""` selects the default export).
    pub name: Vec<u8>,
    /// The queries (`namespace:leaf` strings), in order.
    pub queries: Vec<String>,
}

/// Parse meta context option data: u32 name length, name, u32 query count, then per query
/// u32 length and string. Errors: [`ProtoError::Malformed`] for lengths that do not match the
/// data, a query that is not UTF-8 or has no `namespace:` part (syntactically invalid, the
/// spec's `ERR_INVALID` case); [`ProtoError::StringTooLong`] for strings over 4096 bytes.
pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, ProtoError> {
    fn take_u32(d: &mut &[u8]) -> Result<u32, ProtoError> {
        if d.len() < 4 {
            return Err(ProtoError::Malformed("meta context data truncated"));
        }
        let v = u32::from_be_bytes(d[0..4].try_into().unwrap());
        *d = &d[4..];
        Ok(v)
    }
    fn take_str<'a>(d: &mut &'a [u8]) -> Result<&'a [u8], ProtoError> {
        let n = take_u32(d)? as usize;
        if n > d.len() {
            return Err(ProtoError::Malformed("string length exceeds option data"));
        }
        if n > MAX_STRING {
            return Err(ProtoError::StringTooLong(n));
        }
        let (s, rest) = d.split_at(n);
        *d = rest;
        Ok(s)
    }
    let mut d = data;
    let name = take_str(&mut d)?.to_vec();
    let n = take_u32(&mut d)?;
    // each query takes at least 4 bytes: a count beyond that cannot be honest
    if u64::from(n) * 4 > d.len() as u64 {
        return Err(ProtoError::Malformed("query count exceeds option data"));
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let q = take_str(&mut d)?;
        let q = std::str::from_utf8(q).map_err(|_| ProtoError::Malformed("query is not UTF-8"))?;
        if !q.contains(':') {
            return Err(ProtoError::Malformed("query has no namespace"));
        }
        queries.push(q.to_string());
    }
    if !d.is_empty() {
        return Err(ProtoError::Malformed("trailing bytes after the queries"));
    }
    Ok(MetaContextRequest { name, queries })
}

/// Does this query list select `base:allocation`? For LIST (`list == true`), zero queries
/// list every context and `base:` is a wildcard for the namespace; for SET only the exact name
/// selects it. Other namespaces and unknown `base:` leaves are ignored (proto.md "Metadata
/// querying", `NBD_OPT_LIST_META_CONTEXT`, `NBD_OPT_SET_META_CONTEXT`).
pub fn selects_base_allocation(queries: &[String], list: bool) -> bool {
    if list && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|q| q == BASE_ALLOCATION || (list && q == "base:"))
}

/// `NBD_REP_META_CONTEXT` data: u32 context id, then the context name.
pub fn encode_rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
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
    fn greeting_layout() {
        let g = encode_greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags([0, 0, 0, 3]), Ok(3));
        assert_eq!(parse_client_flags([0, 0, 0, 0x81]), Err(0x81));
    }

    #[test]
    fn info_request_parsing() {
        let mut d = vec![0, 0, 0, 3];
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&[0, 2, 0, 3, 0, 1]);
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"vol");
        assert_eq!(r.requests, vec![3, 1]);
        // name length larger than the data
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        bad.extend_from_slice(&[0, 0]);
        assert!(matches!(
            parse_info_request(&bad),
            Err(ProtoError::Malformed(_))
        ));
        // request count larger than the data
        assert!(matches!(
            parse_info_request(&[0, 0, 0, 0, 0, 5, 0, 1]),
            Err(ProtoError::Malformed(_))
        ));
        assert!(parse_info_request(&[0, 0, 0]).is_err());
        let mut long = (5000u32).to_be_bytes().to_vec();
        long.resize(4 + 5000 + 2, b'a');
        long[4 + 5000] = 0;
        long[4 + 5001] = 0;
        assert_eq!(
            parse_info_request(&long),
            Err(ProtoError::StringTooLong(5000))
        );
    }

    #[test]
    fn export_name_reply_lengths() {
        assert_eq!(encode_export_name_reply(1, 1, true).len(), 10);
        assert_eq!(encode_export_name_reply(1, 1, false).len(), 134);
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
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Write, 0, size - 512, 1024), false),
            Verdict::Error(ENOSPC)
        );
        assert_eq!(
            v(req(Command::WriteZeroes, 0, size, 1), false),
            Verdict::Error(ENOSPC)
        );
        assert_eq!(
            v(req(Command::Write, 0, 0, 512), true),
            Verdict::Error(EPERM)
        );
        assert_eq!(
            v(req(Command::WriteZeroes, 0, 0, 512), true),
            Verdict::Error(EPERM)
        );
        assert_eq!(v(req(Command::Flush, 0, 0, 0), true), Verdict::Serve);
        assert_eq!(v(req(Command::Read, 0, 0, 512), true), Verdict::Serve);
        assert_eq!(
            v(req(Command::Read, 0, u64::MAX, 2), false),
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Write, 0, u64::MAX - 1, 4), false),
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Unknown(0x42), 0, 0, 512), false),
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Read, 0x8000, 0, 512), false),
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_NO_HOLE, 0, 512), false),
            Verdict::Error(EINVAL)
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
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Write, 0, 0, MAX_PAYLOAD + 1), false),
            Verdict::Error(EINVAL)
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
            Verdict::Error(EINVAL)
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
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Trim, 0, 0, 512), true, &none),
            Verdict::Error(EPERM)
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
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(req(Command::Cache, CMD_FLAG_NO_HOLE, 0, 1), false, &none),
            Verdict::Error(EINVAL)
        );
        // FAST_ZERO → ENOTSUP after the other checks
        assert_eq!(
            v(
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 512),
                false,
                &none
            ),
            Verdict::Error(ENOTSUP)
        );
        assert_eq!(
            v(
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 512),
                true,
                &none
            ),
            Verdict::Error(EPERM)
        );
        assert_eq!(
            v(
                req(Command::WriteZeroes, CMD_FLAG_FAST_ZERO, size, 512),
                false,
                &none
            ),
            Verdict::Error(ENOSPC)
        );
        // BLOCK_STATUS needs SR and a context, stays in bounds, is not empty
        let bs = |f, o, l| req(Command::BlockStatus, f, o, l);
        assert_eq!(v(bs(0, 0, 512), false, &none), Verdict::Error(EINVAL));
        assert_eq!(v(bs(0, 0, 512), false, &sr), Verdict::Error(EINVAL));
        assert_eq!(v(bs(0, 0, 512), true, &ctx), Verdict::Serve);
        assert_eq!(v(bs(CMD_FLAG_REQ_ONE, 0, 512), false, &ctx), Verdict::Serve);
        assert_eq!(
            v(bs(CMD_FLAG_DF, 0, 512), false, &ctx),
            Verdict::Error(EINVAL)
        );
        assert_eq!(
            v(bs(0, size - 512, 1024), false, &ctx),
            Verdict::Error(EINVAL)
        );
        assert_eq!(v(bs(0, 0, 0), false, &ctx), Verdict::Error(EINVAL));
        // REQ_ONE is for BLOCK_STATUS only
        assert_eq!(
            v(req(Command::Read, CMD_FLAG_REQ_ONE, 0, 512), false, &ctx),
            Verdict::Error(EINVAL)
        );
    }

    #[test]
    fn block_status_extents() {
        let size = 1 << 20;
        // aligned: exactly the request
        assert_eq!(block_status_extent(0, 4096, size, 512, false), 4096);
        assert_eq!(block_status_extent(0, 4096, size, 512, true), 4096);
        // unaligned end: rounded up without REQ_ONE, down with it
        assert_eq!(block_status_extent(512, 1000, size, 512, false), 1024);
        assert_eq!(block_status_extent(512, 1000, size, 512, true), 512);
        // tiny unaligned request with REQ_ONE: exactly the request
        assert_eq!(block_status_extent(1, 10, size, 512, true), 10);
        // never past the end of the export
        assert_eq!(block_status_extent(size - 512, 100, size, 4096, false), 512);
        // huge request on a huge export: capped to a u32, still block-aligned at the end
        let big = 1u64 << 40;
        let e = block_status_extent(0, u32::MAX, big, 4096, false);
        assert_eq!(u64::from(e) % 4096, 0);
        assert!(e > u32::MAX - 4096);
    }

    /// Parse a run of chunks into (type, flags, offset, length, payload-is-zero).
    fn chunks(mut b: &[u8]) -> Vec<(u16, u16, u64, u64)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let flags = u16::from_be_bytes([b[4], b[5]]);
            let ty = u16::from_be_bytes([b[6], b[7]]);
            let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
            let body = &b[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + len];
            let off = u64::from_be_bytes(body[..8].try_into().unwrap());
            let l = if ty == REPLY_TYPE_OFFSET_HOLE {
                u64::from(u32::from_be_bytes(body[8..12].try_into().unwrap()))
            } else {
                (len - 8) as u64
            };
            out.push((ty, flags, off, l));
            b = &b[CHUNK_HEADER_LEN + len..];
        }
        out
    }

    #[test]
    fn read_chunks_send_holes_only_where_reported_and_zero() {
        let ext = |v: &[(u64, u32)]| -> Vec<Extent> {
            v.iter()
                .map(|&(length, status)| Extent { length, status })
                .collect()
        };
        let z = STATE_HOLE | STATE_ZERO;
        let mut data = vec![7u8; 4096 * 4];
        data[4096..8192].fill(0);
        // all data: no fragmentation
        assert!(encode_read_chunks(1, 0, &data, &ext(&[(16384, 0)])).is_none());
        assert!(encode_read_chunks(1, 0, &data, &[]).is_none());
        // a reported hole with zero bytes: data, hole, data (DONE last)
        let c = encode_read_chunks(1, 1 << 20, &data, &ext(&[(4096, 0), (4096, z), (8192, 0)]))
            .unwrap();
        assert_eq!(
            chunks(&c),
            vec![
                (REPLY_TYPE_OFFSET_DATA, 0, 1 << 20, 4096),
                (REPLY_TYPE_OFFSET_HOLE, 0, (1 << 20) + 4096, 4096),
                (
                    REPLY_TYPE_OFFSET_DATA,
                    REPLY_FLAG_DONE,
                    (1 << 20) + 8192,
                    8192
                ),
            ]
        );
        // a reported hole whose bytes are not zero (written meanwhile) stays data
        assert!(encode_read_chunks(1, 0, &data, &ext(&[(4096, z), (12288, 0)])).is_none());
        // extents short of the end: the rest is data; past the end: clipped; hole last: DONE
        let c = encode_read_chunks(2, 0, &data[4096..8192], &ext(&[(8192, z)])).unwrap();
        assert_eq!(
            chunks(&c),
            vec![(REPLY_TYPE_OFFSET_HOLE, REPLY_FLAG_DONE, 0, 4096)]
        );
        let c = encode_read_chunks(3, 0, &data[..8192], &ext(&[(4096, 0), (1024, z)])).unwrap();
        assert_eq!(
            chunks(&c),
            vec![
                (REPLY_TYPE_OFFSET_DATA, 0, 0, 4096),
                (REPLY_TYPE_OFFSET_HOLE, 0, 4096, 1024),
                (REPLY_TYPE_OFFSET_DATA, REPLY_FLAG_DONE, 5120, 3072),
            ]
        );
    }

    #[test]
    fn block_status_descriptors_from_extents() {
        let size = 1 << 20;
        let hole = STATE_HOLE | STATE_ZERO;
        let ext = |v: &[(u64, u32)]| -> Vec<Extent> {
            v.iter()
                .map(|&(length, status)| Extent { length, status })
                .collect()
        };
        // One data extent: the same answer as before holes were reported.
        for (off, len, req_one) in [(512, 1000, false), (512, 1000, true), (0, 4096, false)] {
            assert_eq!(
                block_status_descriptors(off, len, &ext(&[(len as u64, 0)]), size, 512, req_one),
                vec![(block_status_extent(off, len, size, 512, req_one), 0)]
            );
        }
        // Nothing reported: all data.
        assert_eq!(
            block_status_descriptors(0, 4096, &[], size, 512, false),
            vec![(4096, 0)]
        );
        // Data, hole, data; equal neighbours merged, zero lengths dropped, clipped.
        let e = ext(&[(4096, 0), (0, hole), (4096, 0), (8192, hole), (100_000, 0)]);
        assert_eq!(
            block_status_descriptors(0, 20480, &e, size, 4096, false),
            vec![(8192, 0), (8192, hole), (4096, 0)]
        );
        // REQ_ONE: only the first (merged) descriptor, never longer than the request.
        assert_eq!(
            block_status_descriptors(0, 20480, &e, size, 4096, true),
            vec![(8192, 0)]
        );
        assert_eq!(
            block_status_descriptors(0, 6000, &e, size, 4096, true),
            vec![(4096, 0)]
        );
        // The last descriptor that reaches the end of an unaligned request is rounded up to
        // the block, as the single-extent answer.
        assert_eq!(
            block_status_descriptors(0, 5000, &ext(&[(4096, hole), (904, 0)]), size, 4096, false),
            vec![(4096, hole), (4096, 0)]
        );
        // At most MAX_EXTENTS descriptors; the rest is left for another request.
        let many: Vec<Extent> = (0..3000)
            .map(|i| Extent {
                length: 512,
                status: if i % 2 == 0 { 0 } else { hole },
            })
            .collect();
        let d = block_status_descriptors(0, 3000 * 512, &many, size, 512, false);
        assert_eq!(d.len(), MAX_EXTENTS);
        assert!(d.iter().all(|&(l, _)| l == 512));
    }

    #[test]
    fn chunk_layouts() {
        let h = encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, 7, 0);
        assert_eq!(&h[0..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&h[4..8], &[0, 1, 0, 0]);
        assert_eq!(&h[8..16], &7u64.to_be_bytes());
        let e = encode_error_chunk(EINVAL, 9, "bad");
        assert_eq!(e.len(), 20 + 6 + 3);
        assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&e[16..20], &9u32.to_be_bytes());
        assert_eq!(&e[20..24], &EINVAL.to_be_bytes());
        assert_eq!(&e[24..26], &3u16.to_be_bytes());
        let d = encode_offset_data_header(1, 4096, 512, true);
        assert_eq!(d.len(), 28);
        assert_eq!(&d[16..20], &520u32.to_be_bytes());
        assert_eq!(&d[20..28], &4096u64.to_be_bytes());
        let b = encode_block_status_chunk(1, BASE_ALLOCATION_ID, &[(4096, 0)]);
        assert_eq!(b.len(), 20 + 12);
        assert_eq!(&b[16..20], &12u32.to_be_bytes());
    }

    fn meta(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        d
    }

    #[test]
    fn meta_context_parsing_and_matching() {
        let r = parse_meta_context_request(&meta(b"vol", &[b"base:allocation", b"x-a:b"])).unwrap();
        assert_eq!(r.name, b"vol");
        assert_eq!(r.queries, vec!["base:allocation", "x-a:b"]);
        assert!(selects_base_allocation(&r.queries, false));
        assert!(selects_base_allocation(&[], true));
        assert!(!selects_base_allocation(&[], false));
        assert!(selects_base_allocation(&["base:".into()], true));
        assert!(!selects_base_allocation(&["base:".into()], false));
        assert!(!selects_base_allocation(
            &["qemu:dirty-bitmap:x".into()],
            true
        ));
        assert!(!selects_base_allocation(&["base:nope".into()], false));
        // malformed
        assert!(parse_meta_context_request(&meta(b"vol", &[b"nocolon"])).is_err());
        assert!(parse_meta_context_request(&[0, 0, 0]).is_err());
        let mut lying = meta(b"vol", &[]);
        lying[7..11].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&lying).is_err());
        let mut trailing = meta(b"vol", &[b"base:allocation"]);
        trailing.push(0);
        assert!(parse_meta_context_request(&trailing).is_err());
        assert!(parse_meta_context_request(&meta(b"vol", &[&[0xff, b':']])).is_err());
    }
}
