//! The option phase of the handshake as bytes (proto.md "Newstyle negotiation", "Fixed
//! newstyle negotiation", "Option types", "Option reply types", "Metadata querying"): the
//! greeting, client flags, option headers and the option data this server parses, and every
//! option reply it encodes. No I/O and no decisions: [`crate::session::negotiation`] decides
//! which reply an option gets.

use super::common::{ProtoError, MAX_STRING};

/// `NBDMAGIC`, first 8 bytes the server sends (proto.md "Newstyle negotiation").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second server magic and the magic opening every client option
/// (proto.md "Newstyle negotiation").
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic opening every option reply (proto.md "Fixed newstyle negotiation").
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag `NBD_FLAG_FIXED_NEWSTYLE` (proto.md "Handshake flags").
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag `NBD_FLAG_NO_ZEROES` (proto.md "Handshake flags").
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE` (proto.md "Client flags").
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag `NBD_FLAG_C_NO_ZEROES` (proto.md "Client flags").
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit MUST close the connection
/// (proto.md "Newstyle negotiation").
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES;

/// Option `NBD_OPT_EXPORT_NAME` (proto.md "Option types").
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// Option `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// Option `NBD_OPT_STARTTLS` (proto.md "TLS support"; `ERR_UNSUP` when TLS is off).
pub const OPT_STARTTLS: u32 = 5;
/// Option `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// Option `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// Option `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option `NBD_OPT_EXTENDED_HEADERS` (experimental branch; answered `ERR_UNSUP`).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply `NBD_REP_ACK` (proto.md "Option reply types").
pub const REP_ACK: u32 = 1;
/// Option reply `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// Option reply `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// Option reply `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Error reply `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
/// Error reply `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
/// Error reply `NBD_REP_ERR_TLS_REQD` (FORCEDTLS: any option but `STARTTLS`/`ABORT` before
/// TLS; proto.md "FORCEDTLS mode").
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;
/// Error reply `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
/// Error reply `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

/// Information type `NBD_INFO_EXPORT` (proto.md "Option reply types", `NBD_REP_INFO`).
pub const INFO_EXPORT: u16 = 0;
/// Information type `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// Information type `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information type `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// The one metadata context this server knows (proto.md "Metadata querying", "Metadata
/// contexts").
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Context id this server gives `base:allocation` in `NBD_REP_META_CONTEXT` replies to
/// `NBD_OPT_SET_META_CONTEXT` (`NBD_OPT_LIST_META_CONTEXT` replies use 0, as the spec asks).
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Largest option payload read into memory, in bytes. Larger payloads are discarded (up to
/// [`MAX_OPTION_DISCARD`]) and answered `ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 64 << 10;
/// Largest option payload the server bothers to discard; above it the connection is closed
/// (a denial of service, proto.md "Termination of the session during option haggling").
pub const MAX_OPTION_DISCARD: u32 = 1 << 20;
/// Length of the server greeting (NBDMAGIC, IHAVEOPT, u16 handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of a client option header (IHAVEOPT, u32 option, u32 length).
pub const OPTION_HEADER_LEN: usize = 16;

/// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags `FIXED_NEWSTYLE | NO_ZEROES`
/// (proto.md "Newstyle negotiation", "Handshake flags").
pub fn encode_greeting() -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// Client flags after the greeting. `Err(flags)` if any bit is unknown: the server MUST then
/// close (proto.md "Newstyle negotiation").
pub fn parse_client_flags(b: [u8; 4]) -> Result<u32, u32> {
    let f = u32::from_be_bytes(b);
    if f & !CLIENT_FLAGS_KNOWN != 0 {
        Err(f)
    } else {
        Ok(f)
    }
}

/// A client option header: option number and declared data length in bytes
/// (proto.md "Newstyle negotiation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*` value.
    pub opt: u32,
    /// Length of the option data that follows, in bytes (not yet validated).
    pub len: u32,
}

/// Parse the 16-byte option header. Errors: [`ProtoError::BadOptionMagic`].
pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = u64::from_be_bytes(b[0..8].try_into().unwrap());
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    Ok(OptionHeader {
        opt: u32::from_be_bytes(b[8..12].try_into().unwrap()),
        len: u32::from_be_bytes(b[12..16].try_into().unwrap()),
    })
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and requested information types
/// (proto.md "Option types", `NBD_OPT_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name as sent (bytes; `""` selects the default export).
    pub name: Vec<u8>,
    /// Requested `NBD_INFO_*` types, in order, possibly repeated or unknown.
    pub requests: Vec<u16>,
}

/// Parse `NBD_OPT_INFO`/`NBD_OPT_GO` data: u32 name length, name, u16 count, count × u16.
/// Errors: [`ProtoError::Malformed`] when a length does not match the data (the spec's
/// `ERR_INVALID` case), [`ProtoError::StringTooLong`] for names over 4096 bytes.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    if data.len() < 6 {
        return Err(ProtoError::Malformed("INFO/GO data shorter than 6 bytes"));
    }
    let name_len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
    if name_len > data.len() - 6 {
        return Err(ProtoError::Malformed("name length exceeds option data"));
    }
    if name_len > MAX_STRING {
        return Err(ProtoError::StringTooLong(name_len));
    }
    let name = data[4..4 + name_len].to_vec();
    let rest = &data[4 + name_len..];
    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let reqs = &rest[2..];
    if reqs.len() != n * 2 {
        return Err(ProtoError::Malformed(
            "information request count does not match data",
        ));
    }
    let requests = reqs
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// One option reply: magic, option, reply type, u32 length, data
/// (proto.md "Fixed newstyle negotiation").
pub fn encode_option_reply(opt: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&reply_type.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `NBD_REP_SERVER` data: u32 name length, name, then the description if any
/// (proto.md "Option reply types"; the trailing text is implementation-specific).
pub fn encode_rep_server(name: &str, description: Option<&str>) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    if let Some(d) = description {
        b.extend_from_slice(d.as_bytes());
    }
    b
}

/// `NBD_INFO_EXPORT` data (12 bytes): u16 type 0, u64 size in bytes, u16 transmission flags.
pub fn encode_info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` data (14 bytes): u16 type 3, u32 minimum, preferred, maximum payload,
/// all in bytes (proto.md "Block size constraints").
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` data: u16 type, then the string.
pub fn encode_info_string(info_type: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&info_type.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// Reply to `NBD_OPT_EXPORT_NAME`: u64 size, u16 transmission flags, then 124 zero bytes unless
/// the client set `NBD_FLAG_C_NO_ZEROES` (10 or 134 bytes; proto.md "Newstyle negotiation").
pub fn encode_export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        b.resize(134, 0);
    }
    b
}

/// Data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` (proto.md "Option types"):
/// export name and queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name as sent (`""` selects the default export).
    pub name: Vec<u8>,
    /// The queries (`namespace:leaf` strings), in order.
    pub queries: Vec<String>,
}

/// Parse meta context option data: u32 name length, name, u32 query count, then per query
/// u32 length and string. Errors: [`ProtoError::Malformed`] for lengths that do not match the
/// data, a query that is not UTF-8 or has no `namespace:` part (syntactically invalid, the
/// spec's `ERR_INVALID` case); [`ProtoError::StringTooLong`] for strings over 4096 bytes.
pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, ProtoError> {
    fn take_u32(d: &mut &[u8]) -> Result<u32, ProtoError> {
        if d.len() < 4 {
            return Err(ProtoError::Malformed("meta context data truncated"));
        }
        let v = u32::from_be_bytes(d[0..4].try_into().unwrap());
        *d = &d[4..];
        Ok(v)
    }
    fn take_str<'a>(d: &mut &'a [u8]) -> Result<&'a [u8], ProtoError> {
        let n = take_u32(d)? as usize;
        if n > d.len() {
            return Err(ProtoError::Malformed("string length exceeds option data"));
        }
        if n > MAX_STRING {
            return Err(ProtoError::StringTooLong(n));
        }
        let (s, rest) = d.split_at(n);
        *d = rest;
        Ok(s)
    }
    let mut d = data;
    let name = take_str(&mut d)?.to_vec();
    let n = take_u32(&mut d)?;
    // each query takes at least 4 bytes: a count beyond that cannot be honest
    if u64::from(n) * 4 > d.len() as u64 {
        return Err(ProtoError::Malformed("query count exceeds option data"));
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let q = take_str(&mut d)?;
        let q = std::str::from_utf8(q).map_err(|_| ProtoError::Malformed("query is not UTF-8"))?;
        if !q.contains(':') {
            return Err(ProtoError::Malformed("query has no namespace"));
        }
        queries.push(q.to_string());
    }
    if !d.is_empty() {
        return Err(ProtoError::Malformed("trailing bytes after the queries"));
    }
    Ok(MetaContextRequest { name, queries })
}

/// Does this query list select `base:allocation`? For LIST (`list == true`), zero queries
/// list every context and `base:` is a wildcard for the namespace; for SET only the exact name
/// selects it. Other namespaces and unknown `base:` leaves are ignored (proto.md "Metadata
/// querying", `NBD_OPT_LIST_META_CONTEXT`, `NBD_OPT_SET_META_CONTEXT`).
pub fn selects_base_allocation(queries: &[String], list: bool) -> bool {
    if list && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|q| q == BASE_ALLOCATION || (list && q == "base:"))
}

/// `NBD_REP_META_CONTEXT` data: u32 context id, then the context name.
pub fn encode_rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_layout() {
        let g = encode_greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags([0, 0, 0, 3]), Ok(3));
        assert_eq!(parse_client_flags([0, 0, 0, 0x81]), Err(0x81));
    }

    #[test]
    fn info_request_parsing() {
        let mut d = vec![0, 0, 0, 3];
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&[0, 2, 0, 3, 0, 1]);
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"vol");
        assert_eq!(r.requests, vec![3, 1]);
        // name length larger than the data
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        bad.extend_from_slice(&[0, 0]);
        assert!(matches!(
            parse_info_request(&bad),
            Err(ProtoError::Malformed(_))
        ));
        // request count larger than the data
        assert!(matches!(
            parse_info_request(&[0, 0, 0, 0, 0, 5, 0, 1]),
            Err(ProtoError::Malformed(_))
        ));
        assert!(parse_info_request(&[0, 0, 0]).is_err());
        let mut long = (5000u32).to_be_bytes().to_vec();
        long.resize(4 + 5000 + 2, b'a');
        long[4 + 5000] = 0;
        long[4 + 5001] = 0;
        assert_eq!(
            parse_info_request(&long),
            Err(ProtoError::StringTooLong(5000))
        );
    }

    #[test]
    fn export_name_reply_lengths() {
        assert_eq!(encode_export_name_reply(1, 1, true).len(), 10);
        assert_eq!(encode_export_name_reply(1, 1, false).len(), 134);
    }

    fn meta(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        d
    }

    #[test]
    fn meta_context_parsing_and_matching() {
        let r = parse_meta_context_request(&meta(b"vol", &[b"base:allocation", b"x-a:b"])).unwrap();
        assert_eq!(r.name, b"vol");
        assert_eq!(r.queries, vec!["base:allocation", "x-a:b"]);
        assert!(selects_base_allocation(&r.queries, false));
        assert!(selects_base_allocation(&[], true));
        assert!(!selects_base_allocation(&[], false));
        assert!(selects_base_allocation(&["base:".into()], true));
        assert!(!selects_base_allocation(&["base:".into()], false));
        assert!(!selects_base_allocation(
            &["qemu:dirty-bitmap:x".into()],
            true
        ));
        assert!(!selects_base_allocation(&["base:nope".into()], false));
        // malformed
        assert!(parse_meta_context_request(&meta(b"vol", &[b"nocolon"])).is_err());
        assert!(parse_meta_context_request(&[0, 0, 0]).is_err());
        let mut lying = meta(b"vol", &[]);
        lying[7..11].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&lying).is_err());
        let mut trailing = meta(b"vol", &[b"base:allocation"]);
        trailing.push(0);
        assert!(parse_meta_context_request(&trailing).is_err());
        assert!(parse_meta_context_request(&meta(b"vol", &[&[0xff, b':']])).is_err());
    }
}
