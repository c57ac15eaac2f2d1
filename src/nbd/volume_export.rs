//! The unlocked [`Volume`] as an NBD export: byte ranges map one to one, any range is served
//! (the volume does read-modify-write of partial sectors), errors become `EIO` in the session.

use std::sync::atomic::AtomicBool;

use crate::volume::{Volume, VolumeError};

use super::BlockExport;

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
