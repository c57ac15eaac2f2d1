//! What a server serves: the [`BlockExport`] trait (the bytes, offsets and lengths in bytes)
//! and the named exports of one server ([`ExportConfig`], [`Export`], [`Exports`]), selected by
//! name during option haggling (proto.md "Option types").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::NbdError;
use crate::proto::{self, Extent};

/// What the server exports: a byte-addressed block device.
///
/// Offsets and lengths are in bytes. All calls are blocking; the session runs them on tokio's
/// blocking pool (small READs/WRITEs inline if [`inline_limit`](BlockExport::inline_limit)
/// says so), and many run concurrently (from one or several connections), so
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
    /// `NBD_CMD_TRIM` of `offset..offset + len` (len > 0): a hint that the range is no longer
    /// needed; its content is undefined until written again (proto.md `NBD_CMD_TRIM`). If
    /// `fua`, whatever the trim changed is durable before returning. Like a write, it does
    /// nothing once `abandoned` is set (see [`write_at_unless`](BlockExport::write_at_unless)),
    /// so a dead connection's queued trim never discards a later acknowledged write. The
    /// default does nothing (discard policy "ignore").
    fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<()> {
        let _ = (offset, len, fua, abandoned);
        Ok(())
    }
    /// `base:allocation` status of `offset..offset + len` (len > 0): consecutive extents from
    /// `offset` (proto.md "Metadata contexts"), boundaries inside the range on multiples of
    /// [`min_block_size`](BlockExport::min_block_size). They may stop short of the end (the
    /// client asks again); the session clips, merges and caps them
    /// ([`proto::block_status_descriptors`]). The default reports one data extent (status 0,
    /// always safe): nothing about usage is revealed.
    fn block_status(&self, offset: u64, len: u32) -> std::io::Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent {
            length: u64::from(len),
            status: 0,
        }])
    }

    /// READs and WRITEs of at most this many bytes are served inline, on the runtime thread
    /// reading the connection's requests, instead of on tokio's blocking pool (whose thread
    /// hand-offs cost more than a page-cache `pread` + XTS of 4 KiB). Meanwhile that
    /// connection reads no further requests, so only an export whose small calls take
    /// microseconds (memory, page cache, tmpfs) should return more than 0, the default (every
    /// call on the blocking pool, many at once per connection).
    fn inline_limit(&self) -> u32 {
        0
    }

    /// Whether [`block_status`](BlockExport::block_status) can ever report anything but data
    /// (a hole). When false (the default) the session does not ask it for structured READs
    /// without `DF`, which then always go out as one `OFFSET_DATA` chunk.
    fn reports_holes(&self) -> bool {
        false
    }

    /// [`write_at`](BlockExport::write_at) for a connection that may be abandoned: when
    /// `abandoned` is already set as the write is about to land, nothing is written and
    /// `Ok(false)` is returned; otherwise the write is done and `Ok(true)` returned.
    ///
    /// The session sets `abandoned` as soon as it sees its client gone (EOF, reset, replies
    /// that cannot be sent), so a dead connection's queued writes never land after a write
    /// that another connection made to the same range and got acknowledged since. An
    /// implementation should check the flag under the same lock that orders its writes to the
    /// range (as the LUKS2 volume does with its region locks); this default
    /// checks it just before calling `write_at`.
    ///
    /// `data` is the caller's to discard afterwards (the session's request buffer): an
    /// implementation may use it as scratch, as the LUKS2 volume does by
    /// encrypting it in place; its content on return is unspecified.
    fn write_at_unless(
        &self,
        data: &mut [u8],
        offset: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<bool> {
        if abandoned.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.write_at(data, offset, fua).map(|()| true)
    }

    /// [`write_zeroes`](BlockExport::write_zeroes) with the `abandoned` check of
    /// [`write_at_unless`](BlockExport::write_at_unless); `Ok(false)` if it wrote nothing
    /// (an implementation may stop part way once the flag is set: the client is gone).
    fn write_zeroes_unless(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<bool> {
        if abandoned.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.write_zeroes(offset, len, fua).map(|()| true)
    }
}

/// How an export is presented to clients.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Export name. Clients select the export by this name; `""` selects the default export
    /// (the first of [`Exports`]); any other name gets `NBD_REP_ERR_UNKNOWN` (or a hard close
    /// after `EXPORT_NAME`). At most 4096 bytes (proto.md "Conventions"), unique within a
    /// server; `""` itself is allowed only as the first (default) export's name.
    pub name: String,
    /// Optional human-readable description (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    pub description: Option<String>,
    /// Advertise `NBD_FLAG_READ_ONLY` and refuse writes with `EPERM`.
    pub read_only: bool,
}

/// One named export: how it is presented and what serves its bytes.
#[derive(Clone)]
pub struct Export {
    /// Name, description, read-only.
    pub config: ExportConfig,
    /// The bytes.
    pub export: Arc<dyn BlockExport>,
}

/// The exports of one server, in the order given. The first is the default export, selected
/// by the empty name `""` (proto.md "Option types": "the default export"); `NBD_OPT_LIST`
/// names them in this order.
#[derive(Clone)]
pub struct Exports {
    list: Vec<Export>,
}

impl Exports {
    /// Check and wrap `list` (order kept; the first is the default export).
    ///
    /// Errors: [`NbdError::NoExports`] for an empty list; [`NbdError::NameTooLong`] for a name
    /// over 4096 bytes; [`NbdError::DuplicateExport`] for a name given twice, or `""` given
    /// for any export but the first (it would be unreachable: `""` selects the first).
    pub fn new(list: Vec<(ExportConfig, Arc<dyn BlockExport>)>) -> Result<Exports, NbdError> {
        if list.is_empty() {
            return Err(NbdError::NoExports);
        }
        let mut out: Vec<Export> = Vec::with_capacity(list.len());
        for (i, (config, export)) in list.into_iter().enumerate() {
            if config.name.len() > proto::MAX_STRING {
                return Err(NbdError::NameTooLong(config.name.len()));
            }
            if (i > 0 && config.name.is_empty()) || out.iter().any(|e| e.config.name == config.name)
            {
                return Err(NbdError::DuplicateExport(config.name));
            }
            out.push(Export { config, export });
        }
        Ok(Exports { list: out })
    }

    /// The export a client's name selects: `""` the first, otherwise the export with exactly
    /// this name (bytes compared; names are UTF-8). Returns its index and the export.
    pub fn find(&self, name: &[u8]) -> Option<(usize, &Export)> {
        if name.is_empty() {
            return Some((0, &self.list[0]));
        }
        self.list
            .iter()
            .enumerate()
            .find(|(_, e)| e.config.name.as_bytes() == name)
    }

    /// The export at `index` (as returned by [`find`](Exports::find)). Panics when out of range.
    pub fn get(&self, index: usize) -> &Export {
        &self.list[index]
    }

    /// Every export, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Export> {
        self.list.iter()
    }

    /// Number of exports (at least 1).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: an [`Exports`] holds at least one export.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
