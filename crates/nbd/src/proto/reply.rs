//! Transmission-phase reply encoding (proto.md "Simple reply message", "Structured reply
//! chunk message", "Structured reply types", "Metadata contexts"): simple reply headers,
//! structured reply chunks (`NONE`, `OFFSET_DATA`, `OFFSET_HOLE`, `ERROR`, `BLOCK_STATUS`), and
//! the `base:allocation` extents that BLOCK_STATUS replies and hole-aware READ replies
//! describe. No I/O.

use super::common::MAX_STRING;
use super::errno::Errno;

/// Magic of a 16-byte simple reply (proto.md "Simple reply message").
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a 20-byte structured reply chunk header (proto.md "Structured reply chunk message").
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

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

/// `base:allocation` status flag `NBD_STATE_HOLE`: not allocated in the backing store
/// (proto.md "Metadata contexts").
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status flag `NBD_STATE_ZERO`: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// Most descriptors in one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk (the spec lets a server send
/// fewer than the whole range needs; the client asks again for the rest).
pub const MAX_EXTENTS: usize = 1024;

/// Length of a simple reply header (proto.md "Simple reply message").
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header (proto.md "Structured reply chunk message").
pub const CHUNK_HEADER_LEN: usize = 20;

/// Simple reply header: magic, u32 error (0 for success, else the [`Errno`]'s value), u64
/// cookie (proto.md "Simple reply message"). For a successful READ the data follows.
pub fn encode_simple_reply(error: Option<Errno>, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let error = error.map_or(0, Errno::value);
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
pub fn encode_error_chunk(err: Errno, cookie: u64, msg: &str) -> Vec<u8> {
    let msg = &msg.as_bytes()[..msg.len().min(MAX_STRING)];
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + 6 + msg.len());
    b.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    ));
    b.extend_from_slice(&err.value().to_be_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::options::BASE_ALLOCATION_ID;

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
        let e = encode_error_chunk(Errno::Einval, 9, "bad");
        assert_eq!(e.len(), 20 + 6 + 3);
        assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&e[16..20], &9u32.to_be_bytes());
        assert_eq!(&e[20..24], &Errno::Einval.value().to_be_bytes());
        assert_eq!(&e[24..26], &3u16.to_be_bytes());
        let d = encode_offset_data_header(1, 4096, 512, true);
        assert_eq!(d.len(), 28);
        assert_eq!(&d[16..20], &520u32.to_be_bytes());
        assert_eq!(&d[20..28], &4096u64.to_be_bytes());
        let b = encode_block_status_chunk(1, BASE_ALLOCATION_ID, &[(4096, 0)]);
        assert_eq!(b.len(), 20 + 12);
        assert_eq!(&b[16..20], &12u32.to_be_bytes());
    }
}
