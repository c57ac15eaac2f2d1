//! NBD server: exposes one [`BlockExport`] over the Network Block Device protocol
//! (`doc/proto.md` of NetworkBlockDevice/nbd) to the Linux kernel client, QEMU and libnbd tools.
//!
//! Three parts:
//! - [`proto`]: pure codec (constants, option/request parsing, reply encoding; no I/O);
//! - [`session`]: one connection, generic over `AsyncRead + AsyncWrite` (fixed-newstyle
//!   handshake, then the transmission phase with pipelined requests and simple or structured
//!   replies);
//! - [`server`]: TCP and Unix listeners, one task per client, graceful shutdown ([`serve`]);
//! - [`tls`]: the TLS mode and the rustls acceptor built from PEM files ([`TlsConfig`]).
//!
//! Scope of this version (table: `docs/nbd-conformance.md`): fixed newstyle with `NO_ZEROES`;
//! options `EXPORT_NAME`, `INFO`, `GO`, `LIST`, `ABORT`, `STRUCTURED_REPLY`,
//! `LIST_META_CONTEXT`/`SET_META_CONTEXT` (`base:allocation`), `STARTTLS` (x509 over rustls,
//! in the modes off = NOTLS, on = TLS offered and plain text allowed, require = FORCEDTLS with
//! `ERR_TLS_REQD`; everything negotiated before it is forgotten) (everything else `ERR_UNSUP`,
//! including `EXTENDED_HEADERS`); commands `READ` (with `DF` after structured
//! replies), `WRITE`, `FLUSH`, `WRITE_ZEROES` (`NO_HOLE`; `FAST_ZERO` → `ENOTSUP`), `TRIM` and
//! `CACHE` (no-ops), `BLOCK_STATUS` (everything reported as data, so usage does not leak),
//! `DISC`; simple replies unless structured replies were negotiated; `CAN_MULTI_CONN`.
//! This layer does not depend on `volume`; the volume implements [`BlockExport`].

pub mod proto;
pub mod server;
pub mod session;
pub mod tls;
mod volume_export;

pub use server::{serve, Listen, NbdError};
pub use session::{run_session, SessionEnd, SessionError};
pub use tls::{TlsConfig, TlsError, TlsFiles, TlsMode};

/// What the server exports: a byte-addressed block device.
///
/// Offsets and lengths are in bytes. All calls are blocking; the session runs them on tokio's
/// blocking pool, and many run concurrently (from one or several connections), so
/// implementations do their own locking. The session validates every range against
/// [`size`](BlockExport::size) before calling, so `offset + len <= size()` always holds.
///
/// The server advertises `NBD_FLAG_CAN_MULTI_CONN` (proto.md "Transmission flags"), so an
/// implementation MUST NOT keep a per-connection cache: a write that has returned is visible to
/// every later read from any connection, and [`flush`](BlockExport::flush) makes every
/// returned write durable, whichever connection made it.
pub trait BlockExport: Send + Sync + 'static {
    /// Size of the export in bytes (sent in `NBD_INFO_EXPORT` / the `EXPORT_NAME` reply).
    fn size(&self) -> u64;
    /// Smallest block the export handles natively (512 or 4096 bytes); advertised as the
    /// `NBD_INFO_BLOCK_SIZE` minimum (proto.md "Block size constraints"). The export still
    /// serves ANY byte range (doing read-modify-write itself), so the session never refuses
    /// unaligned requests.
    fn min_block_size(&self) -> u32;
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Write `data` at `offset`; if `fua`, make it durable before returning.
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()>;
    /// Make `offset..offset + len` read back as zeroes; if `fua`, durably.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()>;
    /// Make every write that has returned so far durable.
    fn flush(&self) -> std::io::Result<()>;
}

/// How the export is presented to clients.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Export name. Clients select the export by this name or by `""` (the default export);
    /// any other name gets `NBD_REP_ERR_UNKNOWN` (or a hard close after `EXPORT_NAME`).
    /// At most 4096 bytes (proto.md "Conventions").
    pub name: String,
    /// Optional human-readable description (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    pub description: Option<String>,
    /// Advertise `NBD_FLAG_READ_ONLY` and refuse writes with `EPERM`.
    pub read_only: bool,
}
