//! The unlocked [`Volume`] as an NBD export: byte ranges map one to one, any range is served
//! (the volume does read-modify-write of partial sectors), errors become `EIO` in the session.
//! TRIM and `base:allocation` follow the volume's discard policy ([`crate::volume::Discard`]).

use std::sync::atomic::AtomicBool;

use crate::volume::{Volume, VolumeError};

use super::{proto, BlockExport, Extent};

fn io(e: VolumeError) -> std::io::Error {
    match e {
        VolumeError::Io { source, .. } => source,
        other => std::io::Error::other(other),
    }
}

impl BlockExport for Volume {
    fn size(&self) -> u64 {
        Volume::size(self)
    }

    fn min_block_size(&self) -> u32 {
        self.sector_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        Volume::read_at(self, buf, offset).map_err(io)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        Volume::write_at(self, data, offset, fua).map_err(io)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        Volume::write_zeroes(self, offset, len, fua).map_err(io)
    }

    fn flush(&self) -> std::io::Result<()> {
        Volume::flush(self).map_err(io)
    }

    fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<()> {
        Volume::trim(self, offset, len, fua, Some(abandoned)).map_err(io)
    }

    /// Holes (discard passdown only) are `HOLE | ZERO`: the volume reads them as zeroes.
    fn block_status(&self, offset: u64, len: u32) -> std::io::Result<Vec<Extent>> {
        let runs = Volume::allocation(self, offset, u64::from(len)).map_err(io)?;
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
        data: &[u8],
        offset: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<bool> {
        Volume::write_at_unless(self, data, offset, fua, Some(abandoned)).map_err(io)
    }

    fn write_zeroes_unless(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: &AtomicBool,
    ) -> std::io::Result<bool> {
        Volume::write_zeroes_unless(self, offset, len, fua, Some(abandoned)).map_err(io)
    }
}
