//! Unit tests of [`Negotiation`]: each MUST of the handshake in proto.md ("Newstyle
//! negotiation", "Fixed newstyle negotiation", "Option types", "TLS support", "Metadata
//! querying") checked on the state object alone, without a stream.

use std::sync::Arc;

use super::*;
use crate::export::{BlockExport, ExportConfig};

/// An export that only has a size and a block size (the negotiation reads nothing else).
struct Fake {
    size: u64,
    min: u32,
}

impl BlockExport for Fake {
    fn size(&self) -> u64 {
        self.size
    }
    fn min_block_size(&self) -> u32 {
        self.min
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        unreachable!("the negotiation does no I/O")
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> std::io::Result<()> {
        unreachable!("the negotiation does no I/O")
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
        unreachable!("the negotiation does no I/O")
    }
    fn flush(&self) -> std::io::Result<()> {
        unreachable!("the negotiation does no I/O")
    }
}

const VOL_SIZE: u64 = 1 << 20;
const RO_SIZE: u64 = 8192;

/// Two exports: "vol" (the default, writable, 512-byte blocks, with a description) and "ro"
/// (read-only, 4096-byte blocks, no description).
fn exports() -> Exports {
    let vol = ExportConfig {
        name: "vol".into(),
        description: Some("the first".into()),
        read_only: false,
    };
    let ro = ExportConfig {
        name: "ro".into(),
        description: None,
        read_only: true,
    };
    Exports::new(vec![
        (
            vol,
            Arc::new(Fake {
                size: VOL_SIZE,
                min: 512,
            }) as Arc<dyn BlockExport>,
        ),
        (
            ro,
            Arc::new(Fake {
                size: RO_SIZE,
                min: 4096,
            }),
        ),
    ])
    .unwrap()
}

const FIXED: ClientFlags = ClientFlags {
    fixed: true,
    no_zeroes: true,
};

/// Every option number this server knows or may see, but `EXPORT_NAME`, `ABORT`, `STARTTLS`.
const OTHER_OPTIONS: [u32; 9] = [
    proto::OPT_LIST,
    4, // PEEK_EXPORT, withdrawn
    proto::OPT_INFO,
    proto::OPT_GO,
    proto::OPT_STRUCTURED_REPLY,
    proto::OPT_LIST_META_CONTEXT,
    proto::OPT_SET_META_CONTEXT,
    proto::OPT_EXTENDED_HEADERS,
    0x1234,
];

fn hdr(opt: u32, len: u32) -> OptionHeader {
    OptionHeader { opt, len }
}

/// Send option `opt` with `data` (read in full).
fn send(n: &mut Negotiation, opt: u32, data: &[u8]) -> Step {
    let h = hdr(opt, data.len() as u32);
    assert!(matches!(n.intake(h), Intake::Read));
    n.on_option(h, data)
}

/// (option, reply type) of each option reply; `ExportName` replies as (0, 0).
fn kinds(step: &Step) -> Vec<(u32, u32)> {
    step.replies
        .iter()
        .map(|r| match r {
            Reply::Option { opt, rtype, .. } => (*opt, *rtype),
            Reply::ExportName(_) => (0, 0),
        })
        .collect()
}

/// The data of the reply at `i`.
fn data(step: &Step, i: usize) -> &[u8] {
    match &step.replies[i] {
        Reply::Option { data, .. } => data,
        Reply::ExportName(d) => d,
    }
}

fn continues(step: &Step) -> bool {
    matches!(step.next, Next::Continue)
}

/// The (export, negotiated) of a step entering transmission.
fn chosen(step: &Step) -> (usize, Negotiated) {
    match step.next {
        Next::Transmission { export, negotiated } => (export, negotiated),
        ref other => panic!("expected transmission, got {other:?}"),
    }
}

/// `NBD_OPT_INFO`/`GO` data: name, then the information requests.
fn info(name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// Meta context option data: name, then the queries.
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

/// The (size, transmission flags) in an `NBD_INFO_EXPORT` reply's data.
fn info_export(d: &[u8]) -> (u64, u16) {
    assert_eq!(d.len(), 12);
    assert_eq!(&d[0..2], &proto::INFO_EXPORT.to_be_bytes());
    (
        u64::from_be_bytes(d[2..10].try_into().unwrap()),
        u16::from_be_bytes([d[10], d[11]]),
    )
}

const PLAIN: u16 = 0x0d6d; // transmission flags without structured replies
const WITH_SR: u16 = PLAIN | proto::TFLAG_SEND_DF;

#[test]
fn export_name_of_an_unknown_export_closes_hard() {
    let ex = exports();
    for name in [&b"nope"[..], b"VOL", b"vo", b"vol2", &[b'a'; 4097][..]] {
        let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
        let step = send(&mut n, proto::OPT_EXPORT_NAME, name);
        assert!(step.replies.is_empty(), "no reply can carry the error");
        assert!(matches!(
            step.next,
            Next::Close(SessionError::UnknownExport(_))
        ));
    }
    // A name over 4096 bytes closes even if it were an export's (none can be).
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step = send(&mut n, proto::OPT_EXPORT_NAME, &[b'v'; 4097]);
    assert!(matches!(step.next, Next::Close(_)));
}

#[test]
fn export_name_enters_transmission_with_size_and_flags() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step = send(&mut n, proto::OPT_EXPORT_NAME, b"");
    assert_eq!(chosen(&step), (0, Negotiated::default()));
    let r = data(&step, 0);
    assert_eq!(r.len(), 10, "NO_ZEROES: no 124 zero bytes");
    assert_eq!(&r[0..8], &VOL_SIZE.to_be_bytes());
    assert_eq!(&r[8..10], &PLAIN.to_be_bytes());

    let zeroes = ClientFlags {
        fixed: true,
        no_zeroes: false,
    };
    let mut n = Negotiation::new(&ex, zeroes, TlsMode::Off);
    let step = send(&mut n, proto::OPT_EXPORT_NAME, b"ro");
    assert_eq!(chosen(&step).0, 1);
    let r = data(&step, 0);
    assert_eq!(r.len(), 134);
    assert!(r[10..].iter().all(|&b| b == 0));
    assert_eq!(&r[0..8], &RO_SIZE.to_be_bytes());
    let flags = u16::from_be_bytes([r[8], r[9]]);
    assert_eq!(flags & proto::TFLAG_READ_ONLY, proto::TFLAG_READ_ONLY);

    // SEND_DF after structured replies.
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
    let step = send(&mut n, proto::OPT_EXPORT_NAME, b"vol");
    assert_eq!(&data(&step, 0)[8..10], &WITH_SR.to_be_bytes());
    assert!(chosen(&step).1.structured);
}

#[test]
fn client_without_fixed_newstyle_may_only_send_export_name() {
    let ex = exports();
    let old = ClientFlags {
        fixed: false,
        no_zeroes: false,
    };
    let n = Negotiation::new(&ex, old, TlsMode::Off);
    for opt in OTHER_OPTIONS
        .into_iter()
        .chain([proto::OPT_ABORT, proto::OPT_STARTTLS])
    {
        assert!(
            matches!(n.intake(hdr(opt, 0)), Intake::Close(SessionError::NotFixedNewstyle(o)) if o == opt),
            "option {opt}"
        );
    }
    let mut n = Negotiation::new(&ex, old, TlsMode::Off);
    let step = send(&mut n, proto::OPT_EXPORT_NAME, b"vol");
    assert_eq!(data(&step, 0).len(), 134);
    assert_eq!(chosen(&step).0, 0);
}

#[test]
fn option_length_limits() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let max = proto::MAX_OPTION_DATA;
    assert!(matches!(n.intake(hdr(proto::OPT_LIST, max)), Intake::Read));
    assert!(matches!(
        n.intake(hdr(proto::OPT_LIST, max + 1)),
        Intake::Discard
    ));
    assert!(matches!(
        n.intake(hdr(0x1234, proto::MAX_OPTION_DISCARD)),
        Intake::Discard
    ));
    assert!(matches!(
        n.intake(hdr(proto::OPT_GO, proto::MAX_OPTION_DISCARD + 1)),
        Intake::Close(SessionError::OptionTooLarge { opt: proto::OPT_GO, len }) if len == proto::MAX_OPTION_DISCARD + 1
    ));
    assert!(matches!(
        n.intake(hdr(proto::OPT_GO, u32::MAX)),
        Intake::Close(SessionError::OptionTooLarge { .. })
    ));
    // EXPORT_NAME cannot be answered ERR_TOO_BIG: it closes.
    assert!(matches!(
        n.intake(hdr(proto::OPT_EXPORT_NAME, max)),
        Intake::Read
    ));
    assert!(matches!(
        n.intake(hdr(proto::OPT_EXPORT_NAME, max + 1)),
        Intake::Close(SessionError::OptionTooLarge { .. })
    ));
    // Discarded data: ERR_TOO_BIG, and the session goes on with nothing changed.
    let step = n.on_discarded(hdr(proto::OPT_STRUCTURED_REPLY, max + 1));
    assert_eq!(
        kinds(&step),
        vec![(proto::OPT_STRUCTURED_REPLY, proto::REP_ERR_TOO_BIG)]
    );
    assert!(continues(&step));
    assert_eq!(n.negotiated(), Negotiated::default());
}

#[test]
fn unknown_options_get_err_unsup_and_change_nothing() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    for opt in [4, proto::OPT_EXTENDED_HEADERS, 0x1234, u32::MAX] {
        let step = send(&mut n, opt, b"some data");
        assert_eq!(kinds(&step), vec![(opt, proto::REP_ERR_UNSUP)]);
        assert!(continues(&step));
    }
    assert_eq!(n.negotiated(), Negotiated::default());
    // and the next option is served as usual
    let step = send(&mut n, proto::OPT_LIST, b"");
    assert_eq!(
        kinds(&step).last(),
        Some(&(proto::OPT_LIST, proto::REP_ACK))
    );
}

#[test]
fn abort_is_acknowledged_even_with_data() {
    let ex = exports();
    for d in [&b""[..], b"ignored"] {
        let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
        let step = send(&mut n, proto::OPT_ABORT, d);
        assert_eq!(kinds(&step), vec![(proto::OPT_ABORT, proto::REP_ACK)]);
        assert!(matches!(step.next, Next::Abort));
    }
}

#[test]
fn list_names_every_export_then_ack_and_refuses_data() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step = send(&mut n, proto::OPT_LIST, b"");
    let l = proto::OPT_LIST;
    assert_eq!(
        kinds(&step),
        vec![
            (l, proto::REP_SERVER),
            (l, proto::REP_SERVER),
            (l, proto::REP_ACK)
        ]
    );
    assert_eq!(data(&step, 0), b"\0\0\0\x03volthe first");
    assert_eq!(data(&step, 1), b"\0\0\0\x02ro");
    assert!(continues(&step));
    let step = send(&mut n, proto::OPT_LIST, b"x");
    assert_eq!(kinds(&step), vec![(l, proto::REP_ERR_INVALID)]);
    assert!(continues(&step));
}

#[test]
fn structured_reply_once_and_without_data() {
    let ex = exports();
    let sr = proto::OPT_STRUCTURED_REPLY;
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step = send(&mut n, sr, b"x");
    assert_eq!(kinds(&step), vec![(sr, proto::REP_ERR_INVALID)]);
    assert!(!n.negotiated().structured);
    let step = send(&mut n, sr, b"");
    assert_eq!(kinds(&step), vec![(sr, proto::REP_ACK)]);
    assert!(n.negotiated().structured);
    let step = send(&mut n, sr, b"");
    assert_eq!(kinds(&step), vec![(sr, proto::REP_ERR_INVALID)]);
    assert!(n.negotiated().structured);
}

#[test]
fn info_and_go_reply_export_then_requested_infos_then_ack() {
    let ex = exports();
    let reqs = [
        proto::INFO_BLOCK_SIZE,
        proto::INFO_NAME,
        proto::INFO_NAME, // asked twice: sent once
        99,               // unknown: ignored
        proto::INFO_DESCRIPTION,
    ];
    let d = info(b"", &reqs);
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step_info = send(&mut n, proto::OPT_INFO, &d);
    assert!(continues(&step_info));
    let step_go = send(&mut n, proto::OPT_GO, &d);
    for (step, opt) in [(&step_info, proto::OPT_INFO), (&step_go, proto::OPT_GO)] {
        let i = (opt, proto::REP_INFO);
        assert_eq!(kinds(step), vec![i, i, i, i, (opt, proto::REP_ACK)]);
        assert_eq!(info_export(data(step, 0)), (VOL_SIZE, PLAIN));
        let mut bs = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [512u32, 4096, 32 << 20] {
            bs.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(data(step, 1), &bs[..]);
        assert_eq!(
            data(step, 2),
            b"\0\x01vol",
            "the configured name, asked as \"\""
        );
        assert_eq!(data(step, 3), b"\0\x02the first");
    }
    // INFO then GO: the same information (MUST).
    for i in 0..4 {
        assert_eq!(data(&step_info, i), data(&step_go, i));
    }
    assert_eq!(chosen(&step_go), (0, Negotiated::default()));
}

#[test]
fn info_reports_the_named_export_and_what_is_negotiated() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
    let d = info(b"ro", &[proto::INFO_DESCRIPTION, proto::INFO_BLOCK_SIZE]);
    let step = send(&mut n, proto::OPT_INFO, &d);
    let (size, flags) = info_export(data(&step, 0));
    assert_eq!(size, RO_SIZE);
    assert_eq!(flags & proto::TFLAG_READ_ONLY, proto::TFLAG_READ_ONLY);
    assert_eq!(flags & proto::TFLAG_SEND_DF, proto::TFLAG_SEND_DF);
    // no description: nothing sent for it; block size minimum 4096, preferred at least that
    assert_eq!(step.replies.len(), 3);
    assert_eq!(&data(&step, 1)[2..6], &4096u32.to_be_bytes());
    assert_eq!(&data(&step, 1)[6..10], &4096u32.to_be_bytes());
    let step = send(&mut n, proto::OPT_GO, &d);
    assert_eq!(chosen(&step).0, 1);
}

#[test]
fn info_and_go_errors_keep_the_session_in_haggling() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    for opt in [proto::OPT_INFO, proto::OPT_GO] {
        let step = send(&mut n, opt, &info(b"nope", &[]));
        assert_eq!(kinds(&step), vec![(opt, proto::REP_ERR_UNKNOWN)]);
        assert!(continues(&step));
        for bad in [
            &[0u8, 0, 0][..],
            &[0xff, 0xff, 0xff, 0xff, 0, 0],
            &[0, 0, 0, 0, 0, 5, 0, 1],
        ] {
            let step = send(&mut n, opt, bad);
            assert_eq!(kinds(&step), vec![(opt, proto::REP_ERR_INVALID)]);
            assert!(continues(&step));
        }
    }
}

#[test]
fn set_meta_context_before_structured_replies_is_refused() {
    let ex = exports();
    let set = proto::OPT_SET_META_CONTEXT;
    let list = proto::OPT_LIST_META_CONTEXT;
    let d = meta(b"vol", &[b"base:allocation"]);
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step = send(&mut n, set, &d);
    assert_eq!(kinds(&step), vec![(set, proto::REP_ERR_INVALID)]);
    assert!(!n.negotiated().base_allocation);
    // LIST is answered without structured replies, with context id 0.
    let step = send(&mut n, list, &d);
    assert_eq!(
        kinds(&step),
        vec![(list, proto::REP_META_CONTEXT), (list, proto::REP_ACK)]
    );
    assert_eq!(data(&step, 0), b"\0\0\0\0base:allocation");
    assert!(!n.negotiated().base_allocation, "LIST selects nothing");
    // After structured replies SET selects it, with id 1.
    send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
    let step = send(&mut n, set, &d);
    assert_eq!(
        kinds(&step),
        vec![(set, proto::REP_META_CONTEXT), (set, proto::REP_ACK)]
    );
    assert_eq!(data(&step, 0), b"\0\0\0\x01base:allocation");
    assert!(n.negotiated().base_allocation);
}

#[test]
fn set_meta_context_replaces_the_selection_even_when_it_fails() {
    let ex = exports();
    let set = proto::OPT_SET_META_CONTEXT;
    let selected = |n: &mut Negotiation| {
        send(n, set, &meta(b"vol", &[b"base:allocation"]));
        assert!(n.negotiated().base_allocation);
    };
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
    // malformed (query without a namespace) → ERR_INVALID
    selected(&mut n);
    let step = send(&mut n, set, &meta(b"vol", &[b"nocolon"]));
    assert_eq!(kinds(&step), vec![(set, proto::REP_ERR_INVALID)]);
    assert!(!n.negotiated().base_allocation);
    // unknown export → ERR_UNKNOWN
    selected(&mut n);
    let step = send(&mut n, set, &meta(b"nope", &[b"base:allocation"]));
    assert_eq!(kinds(&step), vec![(set, proto::REP_ERR_UNKNOWN)]);
    assert!(!n.negotiated().base_allocation);
    // zero queries select nothing (MUST), `base:` is no wildcard on SET
    for q in [&[][..], &[&b"base:"[..]], &[&b"x-other:thing"[..]]] {
        selected(&mut n);
        let step = send(&mut n, set, &meta(b"vol", q));
        assert_eq!(kinds(&step), vec![(set, proto::REP_ACK)]);
        assert!(!n.negotiated().base_allocation);
    }
}

#[test]
fn meta_context_selection_holds_only_for_the_chosen_export() {
    let ex = exports();
    let set = proto::OPT_SET_META_CONTEXT;
    let ba: &[&[u8]] = &[b"base:allocation"];
    for (set_on, go_to, holds) in [
        (&b"vol"[..], &b"vol"[..], true),
        (b"", b"vol", true),
        (b"vol", b"", true),
        (b"ro", b"vol", false),
        (b"vol", b"ro", false),
    ] {
        for via_export_name in [false, true] {
            let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
            send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
            send(&mut n, set, &meta(set_on, ba));
            let step = if via_export_name {
                send(&mut n, proto::OPT_EXPORT_NAME, go_to)
            } else {
                send(&mut n, proto::OPT_GO, &info(go_to, &[]))
            };
            let (_, neg) = chosen(&step);
            assert!(neg.structured);
            assert_eq!(neg.base_allocation, holds, "{set_on:?} then {go_to:?}");
        }
    }
}

#[test]
fn notls_and_tls_on_never_require_tls() {
    let ex = exports();
    for mode in [TlsMode::Off, TlsMode::On] {
        let mut n = Negotiation::new(&ex, FIXED, mode);
        for opt in OTHER_OPTIONS {
            let step = send(&mut n, opt, b"");
            assert!(
                !kinds(&step)
                    .iter()
                    .any(|&(_, r)| r == proto::REP_ERR_TLS_REQD),
                "{mode:?} option {opt}"
            );
            // GO with no data is malformed, so the session stays in haggling.
            assert!(continues(&step), "{mode:?} option {opt}");
        }
        let step = n.on_discarded(hdr(proto::OPT_INFO, proto::MAX_OPTION_DATA + 1));
        assert_eq!(
            kinds(&step),
            vec![(proto::OPT_INFO, proto::REP_ERR_TOO_BIG)]
        );
        let step = send(&mut n, proto::OPT_EXPORT_NAME, b"vol");
        assert_eq!(chosen(&step).0, 0);
    }
}

#[test]
fn forced_tls_refuses_every_option_but_starttls_and_abort_before_tls() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Require);
    for opt in OTHER_OPTIONS {
        // with valid data where the option takes some: still refused
        let d = match opt {
            proto::OPT_INFO | proto::OPT_GO => info(b"vol", &[]),
            proto::OPT_LIST_META_CONTEXT => meta(b"vol", &[]),
            _ => Vec::new(),
        };
        let step = send(&mut n, opt, &d);
        assert_eq!(kinds(&step), vec![(opt, proto::REP_ERR_TLS_REQD)], "{opt}");
        assert!(continues(&step));
        // an oversize one too, its data discarded
        let step = n.on_discarded(hdr(opt, proto::MAX_OPTION_DATA + 1));
        assert_eq!(kinds(&step), vec![(opt, proto::REP_ERR_TLS_REQD)], "{opt}");
    }
    assert_eq!(n.negotiated(), Negotiated::default());
    // EXPORT_NAME cannot carry the error: MUST terminate, also for a valid name.
    let step = send(&mut n, proto::OPT_EXPORT_NAME, b"vol");
    assert!(step.replies.is_empty());
    assert!(matches!(step.next, Next::Close(SessionError::TlsRequired)));
    // ... and for a client without fixed newstyle.
    let old = ClientFlags {
        fixed: false,
        no_zeroes: false,
    };
    let mut n = Negotiation::new(&ex, old, TlsMode::Require);
    let step = send(&mut n, proto::OPT_EXPORT_NAME, b"vol");
    assert!(matches!(step.next, Next::Close(SessionError::TlsRequired)));
    // ABORT is allowed before TLS.
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Require);
    let step = send(&mut n, proto::OPT_ABORT, b"");
    assert_eq!(kinds(&step), vec![(proto::OPT_ABORT, proto::REP_ACK)]);
    assert!(matches!(step.next, Next::Abort));
}

#[test]
fn forced_tls_serves_every_option_after_starttls() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Require);
    let step = send(&mut n, proto::OPT_STARTTLS, b"");
    assert_eq!(kinds(&step), vec![(proto::OPT_STARTTLS, proto::REP_ACK)]);
    assert!(matches!(step.next, Next::StartTls));
    assert!(n.tls_active());
    // MUST NOT send ERR_TLS_REQD once TLS is initiated
    for opt in OTHER_OPTIONS {
        let step = send(&mut n, opt, b"");
        assert!(
            !kinds(&step)
                .iter()
                .any(|&(_, r)| r == proto::REP_ERR_TLS_REQD),
            "option {opt}"
        );
    }
    let step = n.on_discarded(hdr(proto::OPT_LIST, proto::MAX_OPTION_DATA + 1));
    assert_eq!(
        kinds(&step),
        vec![(proto::OPT_LIST, proto::REP_ERR_TOO_BIG)]
    );
    let step = send(&mut n, proto::OPT_GO, &info(b"ro", &[]));
    assert_eq!(chosen(&step).0, 1);
}

#[test]
fn starttls_by_mode() {
    let ex = exports();
    let st = proto::OPT_STARTTLS;
    // NOTLS: ERR_UNSUP (MUST be ERR_POLICY, ERR_UNSUP or another permitted error)
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::Off);
    let step = send(&mut n, st, b"");
    assert_eq!(kinds(&step), vec![(st, proto::REP_ERR_UNSUP)]);
    assert!(continues(&step));
    assert!(!n.tls_active());
    for mode in [TlsMode::On, TlsMode::Require] {
        let mut n = Negotiation::new(&ex, FIXED, mode);
        // with data: ERR_INVALID, still in plain text
        let step = send(&mut n, st, b"x");
        assert_eq!(kinds(&step), vec![(st, proto::REP_ERR_INVALID)]);
        assert!(continues(&step));
        assert!(!n.tls_active());
        let step = send(&mut n, st, b"");
        assert_eq!(kinds(&step), vec![(st, proto::REP_ACK)]);
        assert!(matches!(step.next, Next::StartTls));
        // again over TLS: ERR_INVALID (MUST)
        let step = send(&mut n, st, b"");
        assert_eq!(kinds(&step), vec![(st, proto::REP_ERR_INVALID)]);
        assert!(continues(&step));
        assert!(n.tls_active());
    }
}

#[test]
fn starttls_forgets_everything_negotiated_before() {
    let ex = exports();
    let mut n = Negotiation::new(&ex, FIXED, TlsMode::On);
    send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
    send(
        &mut n,
        proto::OPT_SET_META_CONTEXT,
        &meta(b"vol", &[b"base:allocation"]),
    );
    assert_eq!(
        n.negotiated(),
        Negotiated {
            structured: true,
            base_allocation: true
        }
    );
    let step = send(&mut n, proto::OPT_STARTTLS, b"");
    assert!(matches!(step.next, Next::StartTls));
    assert_eq!(n.negotiated(), Negotiated::default());
    // no structured replies: SET_META_CONTEXT refused, INFO without SEND_DF
    let step = send(
        &mut n,
        proto::OPT_SET_META_CONTEXT,
        &meta(b"vol", &[b"base:allocation"]),
    );
    assert_eq!(
        kinds(&step),
        vec![(proto::OPT_SET_META_CONTEXT, proto::REP_ERR_INVALID)]
    );
    let step = send(&mut n, proto::OPT_INFO, &info(b"vol", &[]));
    assert_eq!(info_export(data(&step, 0)), (VOL_SIZE, PLAIN));
    // structured replies may be negotiated again (not "already negotiated")
    let step = send(&mut n, proto::OPT_STRUCTURED_REPLY, b"");
    assert_eq!(
        kinds(&step),
        vec![(proto::OPT_STRUCTURED_REPLY, proto::REP_ACK)]
    );
    // but the old meta context selection is gone: GO enters without it
    let step = send(&mut n, proto::OPT_GO, &info(b"vol", &[]));
    assert_eq!(
        chosen(&step),
        (
            0,
            Negotiated {
                structured: true,
                base_allocation: false
            }
        )
    );
}

#[test]
fn replies_encode_as_on_the_wire() {
    let r = Reply::option(proto::OPT_LIST, proto::REP_ACK, b"ab");
    let b = r.encode();
    assert_eq!(&b[0..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&b[8..12], &proto::OPT_LIST.to_be_bytes());
    assert_eq!(&b[12..16], &proto::REP_ACK.to_be_bytes());
    assert_eq!(&b[16..20], &2u32.to_be_bytes());
    assert_eq!(&b[20..], b"ab");
    assert_eq!(Reply::ExportName(vec![1, 2, 3]).encode(), vec![1, 2, 3]);
}

#[test]
fn client_flags_from_the_wire() {
    assert_eq!(
        ClientFlags::from_wire(3),
        ClientFlags {
            fixed: true,
            no_zeroes: true
        }
    );
    assert_eq!(
        ClientFlags::from_wire(proto::CLIENT_NO_ZEROES),
        ClientFlags {
            fixed: false,
            no_zeroes: true
        }
    );
}
