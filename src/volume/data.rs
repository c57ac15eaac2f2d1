use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::crypto::SectorCipher;
use crate::format::DataSegment;

use super::{LoadedHeader, UnlockedKey, VolumeError};

/// Number of lock stripes guarding read-modify-write of partial sectors.
const LOCK_STRIPES: usize = 256;
/// Largest chunk `write_zeroes` encrypts at once, bytes.
const ZERO_CHUNK: u64 = 1 << 20;

/// An unlocked volume: the plaintext view of the data segment, addressed in bytes from 0 to
/// [`Volume::size`]. Any byte range can be read or written; ranges that cover part of an
/// encryption sector are served by read-modify-write of that sector, serialised against every
/// other write touching it. Safe to share across threads. Keys are wiped on drop.
pub struct Volume {
    file: File,
    path: PathBuf,
    segment: DataSegment,
    cipher: SectorCipher,
    read_only: bool,
    keyslot: u32,
    locks: Box<[Mutex<()>]>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("path", &self.path)
            .field("segment", &self.segment)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// The plaintext view of an image opened with [`open_image`](super::open_image) (whose
    /// locks the volume keeps holding) and read by [`load_header`](super::load_header), with a
    /// key from [`unlock`](super::unlock). `read_only` must match how the file was opened.
    ///
    /// Errors: [`VolumeError::Crypto`] if the key does not fit the cipher.
    pub fn new(
        file: File,
        path: &Path,
        lh: &LoadedHeader,
        key: UnlockedKey,
        read_only: bool,
    ) -> Result<Volume, VolumeError> {
        let cipher = SectorCipher::new(key.key.expose())?;
        Ok(Volume {
            file,
            path: path.to_owned(),
            segment: lh.segment,
            cipher,
            read_only,
            keyslot: key.keyslot,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Size of the plaintext view in bytes (the data segment's length).
    pub fn size(&self) -> u64 {
        self.segment.size
    }

    /// Encryption sector size in bytes (512 or 4096).
    pub fn sector_size(&self) -> u32 {
        self.segment.sector_size
    }

    /// Whether the volume was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The keyslot that unlocked the volume.
    pub fn keyslot(&self) -> u32 {
        self.keyslot
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.segment.size)
        {
            return Err(VolumeError::InvalidArgument(format!(
                "range [{offset}, +{len}) is outside the volume of {} bytes",
                self.segment.size
            )));
        }
        Ok(())
    }

    fn io_err(&self, op: &'static str, offset: u64, e: std::io::Error) -> VolumeError {
        VolumeError::Io {
            op,
            path: self.path.clone(),
            offset,
            source: e,
        }
    }

    /// Sector-aligned byte range `[start, end)` covering `[offset, offset+len)`.
    fn aligned(&self, offset: u64, len: u64) -> (u64, u64) {
        let ss = self.segment.sector_size as u64;
        (offset / ss * ss, (offset + len).div_ceil(ss) * ss)
    }

    /// Read and decrypt whole sectors `[start, start+buf.len())` (plaintext offsets, aligned).
    fn read_sectors(&self, buf: &mut [u8], start: u64) -> Result<(), VolumeError> {
        let at = self.segment.offset + start;
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| self.io_err("read", at, e))?;
        self.cipher
            .decrypt(buf, self.segment.sector_size as usize, start / 512);
        Ok(())
    }

    /// Encrypt and write whole sectors (plaintext in `buf` is destroyed).
    fn write_sectors(&self, buf: &mut [u8], start: u64) -> Result<(), VolumeError> {
        self.cipher
            .encrypt(buf, self.segment.sector_size as usize, start / 512);
        let at = self.segment.offset + start;
        self.file
            .write_all_at(buf, at)
            .map_err(|e| self.io_err("write", at, e))
    }

    /// Lock the stripes of every sector in `[start, end)`, in a fixed order (no deadlock).
    fn lock_sectors(&self, start: u64, end: u64) -> Vec<MutexGuard<'_, ()>> {
        let ss = self.segment.sector_size as u64;
        let first = start / ss;
        let count = (end - start) / ss;
        let mut stripes: Vec<usize> = if count >= LOCK_STRIPES as u64 {
            (0..LOCK_STRIPES).collect()
        } else {
            (first..first + count)
                .map(|s| (s % LOCK_STRIPES as u64) as usize)
                .collect()
        };
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| self.locks[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// Read `buf.len()` plaintext bytes at byte `offset` of the volume.
    ///
    /// Errors: [`VolumeError::InvalidArgument`] when the range leaves the volume,
    /// [`VolumeError::Io`] when the image cannot be read.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.aligned(offset, len);
        if start == offset && end == offset + len {
            return self.read_sectors(buf, start);
        }
        // A partial sector may be under read-modify-write by a request for its other bytes:
        // take its lock so the read never sees a half-written sector.
        let mut tmp = vec![0u8; (end - start) as usize];
        {
            let _guards = self.lock_sectors(start, end);
            self.read_sectors(&mut tmp, start)?;
        }
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    /// Write `data` at byte `offset` of the volume; with `fua`, `fdatasync` before returning.
    /// Partial sectors at either end are read, merged and rewritten under the sector locks.
    ///
    /// Errors: [`VolumeError::InvalidArgument`] when the range leaves the volume or the volume
    /// is read-only, [`VolumeError::Io`] on read, write or sync failure.
    pub fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> Result<(), VolumeError> {
        self.write_at_unless(data, offset, fua, None).map(|_| ())
    }

    /// [`Volume::write_at`], except that nothing is written when `abandoned` is set at the
    /// moment the write holds its sector locks; returns whether it wrote. Checked under the
    /// locks, so a write made after the flag was set, to an overlapping range, by someone
    /// else always lands after this one or instead of it (an abandoned NBD connection's queued
    /// writes never overwrite a later acknowledged write of another connection).
    ///
    /// Errors: as [`Volume::write_at`].
    pub fn write_at_unless(
        &self,
        data: &[u8],
        offset: u64,
        fua: bool,
        abandoned: Option<&AtomicBool>,
    ) -> Result<bool, VolumeError> {
        if self.read_only {
            return Err(VolumeError::InvalidArgument("volume is read-only".into()));
        }
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        let ss = self.segment.sector_size as u64;
        let (start, end) = self.aligned(offset, len);
        let mut buf = vec![0u8; (end - start) as usize];
        {
            let _guards = self.lock_sectors(start, end);
            if abandoned.is_some_and(|a| a.load(Ordering::SeqCst)) {
                return Ok(false);
            }
            if offset != start {
                self.read_sectors(&mut buf[..ss as usize], start)?;
            }
            if offset + len != end && (end - ss != start || offset == start) {
                let tail = buf.len() - ss as usize;
                self.read_sectors(&mut buf[tail..], end - ss)?;
            }
            let skip = (offset - start) as usize;
            buf[skip..skip + data.len()].copy_from_slice(data);
            self.write_sectors(&mut buf, start)?;
        }
        if fua {
            self.flush()?;
        }
        Ok(true)
    }

    /// Make `len` bytes at `offset` read back as zeros (encrypted zeros are written: the
    /// ciphertext of a hole would not decrypt to zeros). With `fua`, sync before returning.
    ///
    /// Errors: as [`Volume::write_at`].
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        self.write_zeroes_unless(offset, len, fua, None).map(|_| ())
    }

    /// [`Volume::write_zeroes`] with the `abandoned` check of [`Volume::write_at_unless`],
    /// made for each chunk of up to 1 MiB: once the flag is set, the rest is not written and
    /// `Ok(false)` is returned.
    ///
    /// Errors: as [`Volume::write_at`].
    pub fn write_zeroes_unless(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: Option<&AtomicBool>,
    ) -> Result<bool, VolumeError> {
        self.check_range(offset, len)?;
        let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            // Keep chunks sector-aligned after the first so only the ends need RMW.
            let pos = offset + done;
            let to_boundary = ZERO_CHUNK - pos % ZERO_CHUNK;
            let n = (len - done).min(to_boundary);
            if !self.write_at_unless(&zeros[..n as usize], pos, false, abandoned)? {
                return Ok(false);
            }
            done += n;
        }
        if fua {
            self.flush()?;
        }
        Ok(true)
    }

    /// `fdatasync` the image: every write that returned before this call is on stable storage.
    ///
    /// Errors: [`VolumeError::Io`].
    pub fn flush(&self) -> Result<(), VolumeError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_err("fdatasync", 0, e))
    }
}
