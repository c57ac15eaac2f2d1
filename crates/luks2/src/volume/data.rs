//! The plaintext view of an unlocked volume ([`Volume`]): reads, writes (read-modify-write of
//! partial sectors under the region locks of `locks.rs`), zeroes, TRIM and the allocation
//! report, each over XTS sector encryption of the data segment. Which ranges are holes, and
//! what a discard policy means, is `holes.rs`'s.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::crypto::SectorCipher;
use crate::format::DataSegment;

use super::error::VolumeError;
use super::header_io::LoadedHeader;
use super::holes::{allocation_runs, image_holes, Discard, Run};
use super::locks::RegionLocks;
use super::store::{read_exact_at, sync_data, write_all_at};
use super::unlock::UnlockedKey;

/// Largest chunk `write_zeroes` encrypts at once, bytes.
const ZERO_CHUNK: u64 = 1 << 20;
/// Largest piece of a whole-sector write encrypted and written at once, bytes.
const WRITE_CHUNK: usize = 1 << 20;
/// Smallest hole that TRIM punches, bytes (a filesystem block on every common filesystem).
pub const PUNCH_ALIGN: u64 = 4096;
/// Most runs [`Volume::allocation`] reports for one query.
pub const MAX_ALLOCATION_RUNS: usize = 1024;

/// The plaintext of a write: borrowed (copied before encryption) or the caller's scratch
/// buffer (encrypted in place).
enum Plaintext<'a> {
    Borrowed(&'a [u8]),
    Scratch(&'a mut [u8]),
}

impl Plaintext<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Plaintext::Borrowed(d) => d,
            Plaintext::Scratch(d) => d,
        }
    }
}

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
    locks: RegionLocks,
    discard: Discard,
    /// Alignment of punched holes in image offsets, bytes (see `punch_granularity`).
    granularity: u64,
    /// Set once `fallocate` said EOPNOTSUPP: TRIM is then a no-op.
    punch_unsupported: AtomicBool,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("path", &self.path)
            .field("segment", &self.segment)
            .field("read_only", &self.read_only)
            .field("discard", &self.discard)
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
        // A filesystem block larger than PUNCH_ALIGN would turn a punch of part of it into
        // written zeroes (ciphertext that decrypts to noise): punch whole blocks only.
        let blksize = file.metadata().map(|m| m.blksize()).unwrap_or(0);
        let fs_block = if blksize.is_power_of_two() && blksize <= 1 << 20 {
            blksize
        } else {
            0
        };
        let granularity = PUNCH_ALIGN
            .max(u64::from(lh.segment.sector_size))
            .max(fs_block);
        Ok(Volume {
            file,
            path: path.to_owned(),
            segment: lh.segment,
            cipher,
            read_only,
            keyslot: key.keyslot,
            locks: RegionLocks::new(),
            discard: Discard::Ignore,
            granularity,
            punch_unsupported: AtomicBool::new(false),
        })
    }

    /// The same volume with discard policy `discard` (a new volume has [`Discard::Ignore`]).
    pub fn with_discard(mut self, discard: Discard) -> Volume {
        self.discard = discard;
        self
    }

    /// The discard policy.
    pub fn discard(&self) -> Discard {
        self.discard
    }

    /// Alignment of the holes TRIM punches, in image-file offsets, bytes: the largest of
    /// [`PUNCH_ALIGN`] (4096), the sector size and the image filesystem's block size
    /// (`st_blksize`, when a power of two up to 1 MiB). With [`Discard::Passdown`], writes
    /// also read-modify-write whole units of this size, so a partial write into a hole fills
    /// the rest of the unit with encrypted zeroes instead of leaving allocated zero
    /// ciphertext (which would decrypt to noise).
    pub fn punch_granularity(&self) -> u64 {
        self.granularity
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

    /// Unit of read-modify-write in writes: the sector, or with [`Discard::Passdown`] the
    /// punch granularity (so a write never leaves part of a filesystem block a hole).
    fn rmw_unit(&self) -> u64 {
        match self.discard {
            Discard::Ignore => self.segment.sector_size as u64,
            Discard::Passdown => self.granularity,
        }
    }

    /// `(start, end, head_end, tail_start)`: the range `[start, end)` covering
    /// `[offset, offset+len)` (len > 0) whose ends lie on multiples of `unit` in image offsets
    /// (clamped to the volume), the end of its first unit and the start of its last unit.
    /// All four are sector-aligned, as the segment offset and `unit` are multiples of the
    /// sector size.
    fn unit_bounds(&self, offset: u64, len: u64, unit: u64) -> (u64, u64, u64, u64) {
        let base = self.segment.offset;
        let down = |v: u64| ((base + v) / unit * unit).saturating_sub(base);
        let up = |v: u64| ((base + v).div_ceil(unit) * unit - base).min(self.segment.size);
        let (start, end) = (down(offset), up(offset + len));
        (start, end, up(start + 1).min(end), down(end - 1).max(start))
    }

    /// Sector-aligned ranges within `[start, end)` (sector-aligned plaintext offsets) whose
    /// every ciphertext byte lies in a hole of the image file, in order; from
    /// `SEEK_DATA`/`SEEK_HOLE`, never from the ciphertext's content. At most `limit` holes;
    /// also returns how far the search got (`end` unless the limit was reached).
    fn hole_sectors(
        &self,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, u64)>, u64), VolumeError> {
        let base = self.segment.offset;
        let ss = self.segment.sector_size as u64;
        let (holes, reached) = image_holes(&self.file, base + start, base + end, limit)
            .map_err(|e| self.io_err("seek for holes", base + start, e))?;
        let sectors = holes
            .into_iter()
            .filter_map(|(a, b)| {
                let (a, b) = ((a - base).div_ceil(ss) * ss, (b - base) / ss * ss);
                (b > a).then_some((a, b))
            })
            .collect();
        Ok((sectors, reached - base))
    }

    /// With [`Discard::Passdown`], [`read_sectors`](Self::read_sectors): hole sectors are
    /// plaintext zeroes, the others are read and decrypted.
    fn read_sectors_sparse(&self, buf: &mut [u8], start: u64) -> Result<(), VolumeError> {
        let end = start + buf.len() as u64;
        let (holes, _) = self.hole_sectors(start, end, usize::MAX)?;
        let mut pos = start;
        for (a, b) in holes.into_iter().chain(std::iter::once((end, end))) {
            if a > pos {
                let part = &mut buf[(pos - start) as usize..(a - start) as usize];
                self.read_sectors_dense(part, pos)?;
            }
            buf[(a - start) as usize..(b - start) as usize].fill(0);
            pos = b;
        }
        Ok(())
    }

    /// Read and decrypt whole sectors `[start, start+buf.len())` (plaintext offsets, aligned).
    /// With [`Discard::Passdown`], sectors that are holes in the image read as zeroes.
    fn read_sectors(&self, buf: &mut [u8], start: u64) -> Result<(), VolumeError> {
        if self.discard == Discard::Passdown {
            return self.read_sectors_sparse(buf, start);
        }
        self.read_sectors_dense(buf, start)
    }

    /// Read and decrypt whole sectors, holes or not.
    fn read_sectors_dense(&self, buf: &mut [u8], start: u64) -> Result<(), VolumeError> {
        let at = self.segment.offset + start;
        read_exact_at(&self.file, buf, at).map_err(|e| self.io_err("read", at, e))?;
        self.cipher
            .decrypt(buf, self.segment.sector_size as usize, start / 512);
        Ok(())
    }

    /// Encrypt and write whole sectors (plaintext in `buf` is destroyed).
    fn write_sectors(&self, buf: &mut [u8], start: u64) -> Result<(), VolumeError> {
        self.cipher
            .encrypt(buf, self.segment.sector_size as usize, start / 512);
        let at = self.segment.offset + start;
        write_all_at(&self.file, buf, at).map_err(|e| self.io_err("write", at, e))
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
            let _guards = self.locks.lock(start, end);
            self.read_sectors(&mut tmp, start)?;
        }
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    /// Write `data` at byte `offset` of the volume; with `fua`, `fdatasync` before returning.
    /// Partial sectors at either end are read, merged and rewritten under the sector locks
    /// (with [`Discard::Passdown`], partial units of [`Volume::punch_granularity`]). A write of
    /// whole units is encrypted and written in pieces of at most 1 MiB, through one buffer of
    /// that size, so it needs at most 1 MiB besides `data`; a partial one needs a buffer of the
    /// units it covers.
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
        self.write_impl(Plaintext::Borrowed(data), offset, fua, abandoned)
    }

    /// [`Volume::write_at_unless`] for a caller that no longer needs `data` afterwards (the
    /// NBD session's request buffer): a write of whole units is encrypted in place in `data`
    /// and written from there, with no copy and no buffer besides `data`. A write covering
    /// part of a unit is served as by [`Volume::write_at_unless`]. The content of `data` on
    /// return is unspecified (ciphertext after a whole-unit write, even a failed one; the
    /// plaintext after a partial, abandoned or refused one).
    ///
    /// Errors: as [`Volume::write_at`].
    pub fn write_in_place_unless(
        &self,
        data: &mut [u8],
        offset: u64,
        fua: bool,
        abandoned: Option<&AtomicBool>,
    ) -> Result<bool, VolumeError> {
        self.write_impl(Plaintext::Scratch(data), offset, fua, abandoned)
    }

    fn write_impl(
        &self,
        mut data: Plaintext<'_>,
        offset: u64,
        fua: bool,
        abandoned: Option<&AtomicBool>,
    ) -> Result<bool, VolumeError> {
        if self.read_only {
            return Err(VolumeError::InvalidArgument("volume is read-only".into()));
        }
        let len = data.bytes().len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        let (start, end, head_end, tail_start) = self.unit_bounds(offset, len, self.rmw_unit());
        // Whole units (no read-modify-write): borrowed plaintext is encrypted through a buffer
        // of at most WRITE_CHUNK bytes, reused chunk after chunk; scratch plaintext in place.
        let whole = offset == start && offset + len == end;
        let mut buf = match (&data, whole) {
            (Plaintext::Scratch(_), true) => Vec::new(),
            (Plaintext::Borrowed(d), true) => Vec::with_capacity(d.len().min(WRITE_CHUNK)),
            (_, false) => vec![0u8; (end - start) as usize],
        };
        {
            let _guards = self.locks.lock(start, end);
            if abandoned.is_some_and(|a| a.load(Ordering::SeqCst)) {
                return Ok(false);
            }
            match (&mut data, whole) {
                (Plaintext::Scratch(d), true) => self.write_sectors(d, start)?,
                (Plaintext::Borrowed(d), true) => {
                    for (i, part) in d.chunks(WRITE_CHUNK).enumerate() {
                        buf.clear();
                        buf.extend_from_slice(part);
                        self.write_sectors(&mut buf, start + (i * WRITE_CHUNK) as u64)?;
                    }
                }
                (_, false) => {
                    if offset != start {
                        self.read_sectors(&mut buf[..(head_end - start) as usize], start)?;
                    }
                    if offset + len != end && (tail_start >= head_end || offset == start) {
                        let tail = (tail_start - start) as usize;
                        self.read_sectors(&mut buf[tail..], tail_start)?;
                    }
                    let skip = (offset - start) as usize;
                    buf[skip..skip + len as usize].copy_from_slice(data.bytes());
                    self.write_sectors(&mut buf, start)?;
                }
            }
        }
        if fua {
            self.flush()?;
        }
        Ok(true)
    }

    /// Make `len` bytes at `offset` read back as zeros (encrypted zeros are written, whatever
    /// the discard policy: a hole decrypts to noise under cryptsetup/dm-crypt and with
    /// [`Discard::Ignore`], so punched "zeroes" would not survive a change of reader). With
    /// `fua`, sync before returning.
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
        // One buffer, zeroed again for each chunk and encrypted in place: 1 MiB per request.
        let mut zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            // Keep chunks sector-aligned after the first so only the ends need RMW.
            let pos = offset + done;
            let to_boundary = ZERO_CHUNK - pos % ZERO_CHUNK;
            let n = (len - done).min(to_boundary);
            let chunk = &mut zeros[..n as usize];
            if done > 0 {
                chunk.fill(0);
            }
            if !self.write_impl(Plaintext::Scratch(chunk), pos, false, abandoned)? {
                return Ok(false);
            }
            done += n;
        }
        if fua {
            self.flush()?;
        }
        Ok(true)
    }

    /// TRIM `len` bytes at `offset` (proto.md `NBD_CMD_TRIM`: a hint; the content of the range
    /// is undefined until written again). With [`Discard::Ignore`] nothing happens. With
    /// [`Discard::Passdown`] the part of the range whose image offsets are aligned to
    /// [`Volume::punch_granularity`] is punched (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) under
    /// the same sector locks as writes, so it never interleaves with a write to those
    /// sectors; the unaligned head and tail are left as they are. A filesystem without
    /// hole punching (`EOPNOTSUPP`) makes TRIM a no-op, with one warning. With `fua`, sync
    /// before returning. Nothing is punched when `abandoned` is set once the locks are held
    /// (as [`Volume::write_at_unless`]).
    ///
    /// Errors: [`VolumeError::InvalidArgument`] when the range leaves the volume or the volume
    /// is read-only, [`VolumeError::Io`] when `fallocate` or the sync fails.
    pub fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        abandoned: Option<&AtomicBool>,
    ) -> Result<(), VolumeError> {
        if self.read_only {
            return Err(VolumeError::InvalidArgument("volume is read-only".into()));
        }
        self.check_range(offset, len)?;
        if self.discard == Discard::Ignore || self.punch_unsupported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (g, base) = (self.granularity, self.segment.offset);
        let (a, b) = (
            (base + offset).div_ceil(g) * g,
            (base + offset + len) / g * g,
        );
        if b <= a {
            return Ok(());
        }
        {
            let _guards = self.locks.lock(a - base, b - base);
            if abandoned.is_some_and(|x| x.load(Ordering::SeqCst)) {
                return Ok(());
            }
            // SAFETY: plain syscall on an fd that stays open for the call.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    a as libc::off_t,
                    (b - a) as libc::off_t,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    if !self.punch_unsupported.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            image = %self.path.display(),
                            "the image's filesystem cannot punch holes: TRIM is ignored"
                        );
                    }
                    return Ok(());
                }
                return Err(self.io_err("fallocate(PUNCH_HOLE)", a, e));
            }
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// The allocation of `[offset, offset+len)` (`base:allocation`, proto.md "Metadata
    /// contexts"): consecutive [`Run`]s from `offset`, adjacent runs differing, every
    /// boundary inside the range on a sector boundary. With [`Discard::Ignore`] one data run
    /// of `len` (holes are not looked for, so usage does not leak). With
    /// [`Discard::Passdown`] a sector is a hole when all its ciphertext lies in a hole of the
    /// image file (`SEEK_DATA`/`SEEK_HOLE`); the runs stop early after
    /// [`MAX_ALLOCATION_RUNS`] runs, else they cover the range exactly. Empty when `len` is 0.
    ///
    /// Errors: [`VolumeError::InvalidArgument`] when the range leaves the volume,
    /// [`VolumeError::Io`] when `lseek` fails.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Run>, VolumeError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.discard == Discard::Ignore {
            return Ok(vec![Run {
                length: len,
                hole: false,
            }]);
        }
        let (start, end) = self.aligned(offset, len);
        let (holes, reached) = self.hole_sectors(start, end, MAX_ALLOCATION_RUNS / 2)?;
        Ok(allocation_runs(
            offset,
            len,
            (start, end),
            &holes,
            reached,
            self.segment.sector_size as u64,
        ))
    }

    /// `fdatasync` the image: every write that returned before this call is on stable storage.
    ///
    /// Errors: [`VolumeError::Io`].
    pub fn flush(&self) -> Result<(), VolumeError> {
        sync_data(&self.file).map_err(|e| self.io_err("fdatasync", 0, e))
    }
}
