//! The image's holes and what TRIM does with them: the discard policy ([`Discard`]), the
//! allocation report's runs ([`Run`], built by a pure function from the holes), and the holes
//! of the image file from `lseek(SEEK_DATA/SEEK_HOLE)`, never from its content.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::VolumeError;
use super::header_io::LoadedHeader;

/// What TRIM (discard) does to the image: the per-volume discard policy (`--discard`).
///
/// cryptsetup(8) on `--allow-discards`: "This command can have a negative security impact
/// because it can make filesystem-level operations visible on the physical device."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// TRIM succeeds and changes nothing; reads never look for holes (a never-written sector
    /// of a sparse image decrypts to pseudo-random bytes, as under dm-crypt). Nothing about
    /// usage leaks through TRIM. The default, as cryptsetup without `--allow-discards`.
    #[default]
    Ignore,
    /// TRIM punches holes in the image file (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) over the
    /// part of the range that is aligned to [`super::Volume::punch_granularity`] in image offsets;
    /// holes read back as plaintext zeroes and are reported by [`super::Volume::allocation`]. The
    /// holes show anyone who can read the image which ranges are unused.
    Passdown,
}

impl std::fmt::Display for Discard {
    /// The `--discard` flag's word: `ignore` or `passdown` (for log lines).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Discard::Ignore => "ignore",
            Discard::Passdown => "passdown",
        })
    }
}

/// A run of the volume with one allocation state, from [`super::Volume::allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Length in bytes.
    pub length: u64,
    /// Every sector of the run is a hole in the image file (reads as zeroes with
    /// [`Discard::Passdown`]).
    pub hole: bool,
}

/// The allocation runs of the request `[offset, offset+len)` (`len` > 0) from the hole sectors
/// `holes` (sector-aligned, in order, within `[start, end)`, the request's sector-aligned
/// cover) found by a search that got as far as `reached`; `ss` is the sector size in bytes.
/// Consecutive runs from `offset`, every boundary inside the request on a sector boundary;
/// they stop early where the search stopped, else cover the request exactly.
pub(crate) fn allocation_runs(
    offset: u64,
    len: u64,
    (start, end): (u64, u64),
    holes: &[(u64, u64)],
    reached: u64,
    ss: u64,
) -> Vec<Run> {
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = start;
    for &(a, b) in holes {
        if a > pos {
            runs.push((pos, a, false));
        }
        runs.push((a, b, true));
        pos = b;
    }
    // Past the last hole, up to where the search got, is data (a partial sector is data).
    let known = (reached.div_ceil(ss) * ss).min(end);
    if pos < known {
        runs.push((pos, known, false));
    }
    // Clip to the request (runs are whole sectors, so none becomes empty).
    let stop = (offset + len).min(runs.last().map_or(offset, |r| r.1));
    runs.into_iter()
        .map(|(a, b, hole)| (a.max(offset), b.min(stop), hole))
        .filter(|(a, b, _)| b > a)
        .map(|(a, b, hole)| Run {
            length: b - a,
            hole,
        })
        .collect()
}

/// Holes of `file` within `[from, to)` (file offsets), in order, from `lseek(SEEK_DATA)` and
/// `lseek(SEEK_HOLE)` (a filesystem without them reports everything as data). At most `limit`
/// holes; returns them and how far the search got (`to` unless the limit stopped it). Uses
/// only the offsets `lseek` returns, so the shared file position does not matter.
pub(crate) fn image_holes(
    file: &File,
    from: u64,
    to: u64,
    limit: usize,
) -> std::io::Result<(Vec<(u64, u64)>, u64)> {
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: plain syscall on an fd that stays open for the call.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `pos` (or `pos` is at or past the end of the file).
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        Err(e)
    };
    let mut holes = Vec::new();
    let mut pos = from;
    while pos < to {
        if holes.len() == limit {
            return Ok((holes, pos));
        }
        let data = seek(pos, libc::SEEK_DATA)?.unwrap_or(to).min(to);
        if data > pos {
            holes.push((pos, data));
        }
        if data >= to {
            break;
        }
        pos = seek(data, libc::SEEK_HOLE)?.unwrap_or(to).min(to);
    }
    Ok((holes, to))
}

/// Bytes of the data segment of `lh` that are holes in the image file (never written, or
/// discarded with [`Discard::Passdown`]): what the image shows about the volume's usage to
/// anyone who can read it, without a key.
///
/// Errors: [`VolumeError::Io`] when `lseek` fails.
pub fn segment_hole_bytes(file: &File, path: &Path, lh: &LoadedHeader) -> Result<u64, VolumeError> {
    let seg = lh.segment;
    let (holes, _) =
        image_holes(file, seg.offset, seg.offset + seg.size, usize::MAX).map_err(|e| {
            VolumeError::Io {
                op: "seek for holes",
                path: path.to_owned(),
                offset: seg.offset,
                source: e,
            }
        })?;
    Ok(holes.iter().map(|(a, b)| b - a).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(length: u64, hole: bool) -> Run {
        Run { length, hole }
    }

    #[test]
    fn allocation_runs_table() {
        // (offset, len, cover, holes, reached, expected runs); 512-byte sectors.
        type Row = (u64, u64, (u64, u64), Vec<(u64, u64)>, u64, Vec<Run>);
        let rows: Vec<Row> = vec![
            (0, 4096, (0, 4096), vec![], 4096, vec![run(4096, false)]),
            (
                0,
                4096,
                (0, 4096),
                vec![(0, 4096)],
                4096,
                vec![run(4096, true)],
            ),
            (
                0,
                4096,
                (0, 4096),
                vec![(1024, 2048)],
                4096,
                vec![run(1024, false), run(1024, true), run(2048, false)],
            ),
            (
                0,
                4096,
                (0, 4096),
                vec![(2048, 4096)],
                4096,
                vec![run(2048, false), run(2048, true)],
            ),
            // An unaligned request is clipped to itself at both ends.
            (
                100,
                3000,
                (0, 3584),
                vec![(0, 1024)],
                3584,
                vec![run(924, true), run(2076, false)],
            ),
            // The search stopped (limit) at 1536: the runs stop there too.
            (
                0,
                4096,
                (0, 4096),
                vec![(0, 512), (1024, 1536)],
                1536,
                vec![run(512, true), run(512, false), run(512, true)],
            ),
            // Stopped inside a sector: the partial sector counts as data.
            (
                0,
                4096,
                (0, 4096),
                vec![(0, 512)],
                700,
                vec![run(512, true), run(512, false)],
            ),
        ];
        for (offset, len, cover, holes, reached, want) in rows {
            let got = allocation_runs(offset, len, cover, &holes, reached, 512);
            assert_eq!(
                got, want,
                "offset {offset} len {len} holes {holes:?} reached {reached}"
            );
            if reached >= cover.1 {
                assert_eq!(got.iter().map(|r| r.length).sum::<u64>(), len);
            }
            assert!(got.windows(2).all(|w| w[0].hole != w[1].hole), "{got:?}");
        }
    }
}
