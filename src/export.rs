//! The unlocked [`Volume`] as an NBD export ([`VolumeExport`]): byte ranges map one to one, any
//! range is served (the volume does read-modify-write of partial sectors), errors become `EIO` in
//! the session. TRIM and `base:allocation` follow the volume's discard policy ([`Discard`]).
//!
//! The adapter lives here, above both crates, so that the NBD crate knows nothing of LUKS and the
//! volume crate nothing of NBD.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::volume::{Discard, Volume, VolumeError};

use crate::nbd::{proto, BlockExport, Extent};

/// READs and WRITEs a volume serves inline on the connection's runtime thread, bytes (its
/// [`BlockExport::inline_limit`]; the CLI's `--inline-limit` default).
pub const VOLUME_INLINE_LIMIT: u32 = 64 << 10;

fn io(e: VolumeError) -> std::io::Error {
    match e {
        VolumeError::Io { source, .. } => source,
        other => std::io::Error::other(other),
    }
}

/// A shared [`Volume`] served as an NBD [`BlockExport`]; [`VolumeExport::shared`] makes the
/// `Arc<dyn BlockExport>` the server takes.
pub struct VolumeExport(pub Arc<Volume>);

impl VolumeExport {
    /// `volume` as the trait object [`nbd::serve`](crate::nbd::serve) and
    /// [`nbd::run_transmission`](crate::nbd::run_transmission) take.
    pub fn shared(volume: Arc<Volume>) -> Arc<dyn BlockExport> {
        Arc::new(VolumeExport(volume))
    }
}

impl BlockExport for VolumeExport {
    fn size(&self) -> u64 {
        Volume::size(&self.0)
    }

    fn min_block_size(&self) -> u32 {
        self.0.sector_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        Volume::read_at(&self.0, buf, offset).map_err(io)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        Volume::write_at(&self.0, data, offset, fua).map_err(io)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        Volume::write_zeroes(&self.0, offset, len, fua).map_err(io)
    }

    fn flush(&self) -> std::io::Result<()> {
        Volume::flush(&self.0).map_err(io)
    }

    fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<()> {
        Volume::trim(&self.0, offset, len, fua, Some(abandoned)).map_err(io)
    }

    /// 64 KiB: a `pread`/`pwrite` of the page cache or tmpfs plus XTS of up to 64 KiB takes
    /// microseconds, less than a hand-off to the blocking pool (profiled in
    /// `docs/performance.md`). On an image on a slow disk, a small request then holds up its
    /// connection's next requests for the disk's latency.
    fn inline_limit(&self) -> u32 {
        VOLUME_INLINE_LIMIT
    }

    /// Only with discard passdown: with `ignore` nothing is ever reported as a hole.
    fn reports_holes(&self) -> bool {
        self.0.discard() == Discard::Passdown
    }

    /// Holes (discard passdown only) are `HOLE | ZERO`: the volume reads them as zeroes.
    fn block_status(&self, offset: u64, len: u32) -> std::io::Result<Vec<Extent>> {
        let runs = Volume::allocation(&self.0, offset, u64::from(len)).map_err(io)?;
        Ok(runs
            .into_iter()
            .map(|r| Extent {
                length: r.length,
                status: if r.hole {
                    proto::STATE_HOLE | proto::STATE_ZERO
                } else {
                    0
                },
            })
            .collect())
    }

    fn write_at_unless(
        &self,
        data: &mut [u8],
        offset: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<bool> {
        // The request buffer is encrypted in place: no copy of the payload (see
        // `docs/performance.md`).
        Volume::write_in_place_unless(&self.0, data, offset, fua, Some(abandoned)).map_err(io)
    }

    fn write_zeroes_unless(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<bool> {
        Volume::write_zeroes_unless(&self.0, offset, len, fua, Some(abandoned)).map_err(io)
    }
}
