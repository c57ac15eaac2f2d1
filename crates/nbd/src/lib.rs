//! NBD server: exposes one or more [`BlockExport`]s, each under a name, over the Network Block
//! Device protocol (`doc/proto.md` of NetworkBlockDevice/nbd) to the Linux kernel client, QEMU
//! and libnbd tools.
//!
//! This file only declares the modules and re-exports their public items. The parts:
//! - [`export`]: what is served ([`BlockExport`]) and under which names ([`Exports`]);
//! - [`proto`]: pure codec (constants, option/request parsing, reply encoding, error values
//!   [`Errno`]; no I/O);
//! - [`session`]: one connection, generic over `AsyncRead + AsyncWrite`: the fixed-newstyle
//!   handshake (option negotiation as a pure state object, [`session::negotiation`]), then the
//!   transmission phase with pipelined requests and simple or structured replies, with the
//!   counters of the per-connection log line ([`SessionStats`]);
//! - [`server`]: TCP and Unix listeners (or sockets inherited through systemd socket
//!   activation, [`activation`]), one task per client, a connection limit, a pid file, and
//!   graceful shutdown ([`serve`], [`ServerOptions`]);
//! - [`kernel`]: the Linux kernel client (`/dev/nbdN`) over a socket pair, through netlink
//!   or the NBD ioctls, the server side starting at transmission ([`run_transmission`]);
//! - [`tls`]: the TLS mode and the rustls acceptor built from PEM files ([`TlsConfig`]);
//! - [`buffers`]: the server-wide pool of reused READ/WRITE data buffers;
//! - [`budget`]: the server-wide budget of buffered READ/WRITE bytes (`--max-buffered`), a
//!   floor per connection plus a shared pool, enforced by backpressure;
//! - [`admission`]: handshake slots (`--max-handshakes`, evicting the longest-silent
//!   handshake when full) apart from established slots (`--max-connections`);
//! - [`refusals`]: rate-limited warnings about refused connections;
//! - [`error`]: configuration and listener errors ([`NbdError`]).
//!
//! Exports ([`Exports`]): any number, each an [`ExportConfig`] and an `Arc<dyn BlockExport>`,
//! selected by name in `EXPORT_NAME`, `INFO`, `GO`, `LIST_META_CONTEXT` and
//! `SET_META_CONTEXT`; the empty name `""` selects the default export, which is the first one
//! given. `LIST` names every export in order. An unknown name gets `NBD_REP_ERR_UNKNOWN`, or a
//! hard close after `EXPORT_NAME` (MUST, proto.md "Option types"). Read-only is per export.
//!
//! Scope of this version (table: `docs/nbd-conformance.md`): fixed newstyle with `NO_ZEROES`;
//! options `EXPORT_NAME`, `INFO`, `GO`, `LIST`, `ABORT`, `STRUCTURED_REPLY`,
//! `LIST_META_CONTEXT`/`SET_META_CONTEXT` (`base:allocation`), `STARTTLS` (x509 over rustls,
//! in the modes off = NOTLS, on = TLS offered and plain text allowed, require = FORCEDTLS with
//! `ERR_TLS_REQD`; everything negotiated before it is forgotten) (everything else `ERR_UNSUP`,
//! including `EXTENDED_HEADERS`); commands `READ` (with `DF` after structured
//! replies), `WRITE`, `FLUSH`, `WRITE_ZEROES` (`NO_HOLE`; `FAST_ZERO` → `ENOTSUP`), `TRIM`
//! ([`BlockExport::trim`]: the export's discard policy), `CACHE` (a no-op), `BLOCK_STATUS`
//! ([`BlockExport::block_status`]), `DISC`; simple replies unless structured replies were
//! negotiated; `CAN_MULTI_CONN`.
//!
//! The export's discard policy decides TRIM and `base:allocation`: with `ignore` (default)
//! TRIM changes nothing and everything is reported as data, so usage does not leak; with
//! `passdown` TRIM punches holes in the image, and holes are reported as
//! `NBD_STATE_HOLE | NBD_STATE_ZERO`, read as zeroes, and sent as `OFFSET_HOLE` chunks in
//! structured reads without `DF` ([`proto::encode_read_chunks`]). This crate knows nothing of
//! LUKS: the `nbdcrypt` package adapts its volume to [`BlockExport`].

pub mod activation;
pub mod admission;
pub mod budget;
pub mod buffers;
pub mod error;
pub mod export;
pub mod kernel;
pub mod preflight;
pub mod proto;
pub mod refusals;
pub mod server;
pub mod session;
pub mod tls;

pub use admission::DEFAULT_MAX_HANDSHAKES;
pub use budget::MemoryBudget;
pub use error::NbdError;
pub use export::{BlockExport, Export, ExportConfig, Exports};
pub use proto::{Errno, Extent};
pub use server::{serve, Listen, ServerOptions, DEFAULT_HANDSHAKE_LIMIT, DEFAULT_MAX_CONNECTIONS};
pub use session::{
    run_session, run_transmission, SessionEnd, SessionError, SessionOptions, SessionStats,
};
pub use tls::{TlsConfig, TlsError, TlsFiles, TlsMode};
