//! Several exports in one server, over a raw socket against the in-process server with RAM
//! exports (proto.md "Option types"): LIST names every export in order, INFO / GO /
//! EXPORT_NAME / LIST_META_CONTEXT / SET_META_CONTEXT select by name (`""` = the first),
//! unknown names get `ERR_UNKNOWN` (or a hard close after EXPORT_NAME), read-only is per export,
//! a meta context selection holds only for the export it named; duplicate names are refused
//! before anything is bound; the connection limit closes the extra connection only; shutdown
//! flushes every export.

use crate::common;

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nbd::*;
use nbdcrypt::nbd::{serve, BlockExport, ExportConfig, Listen, NbdError, ServerOptions};

const OPT_EXPORT_NAME: u32 = 1;
const OPT_LIST: u32 = 3;
const REP_SERVER: u32 = 2;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const TFLAG_READ_ONLY: u16 = 1 << 1;

fn cfg(name: &str, description: Option<&str>, read_only: bool) -> ExportConfig {
    ExportConfig {
        name: name.into(),
        description: description.map(str::to_owned),
        read_only,
    }
}

/// Three exports: `a` (1 MiB, read-write, the default), `b` (2 MiB, read-only, 4096-byte
/// blocks), `c` (3 MiB, read-write, no description). Each is filled with its own byte.
fn three() -> (TestServer, [Arc<MemExport>; 3]) {
    let a = MemExport::new(MIB, 512);
    let b = MemExport::new(2 * MIB, 4096);
    let c = MemExport::new(3 * MIB, 512);
    for (e, byte) in [(&a, 0xaa), (&b, 0xbb), (&c, 0xcc)] {
        e.data.write().unwrap().fill(byte);
    }
    let srv = TestServer::start_many(
        vec![
            (cfg("a", Some("volume A"), false), a.clone()),
            (cfg("b", Some("volume B"), true), b.clone()),
            (cfg("c", None, false), c.clone()),
        ],
        ServerOptions::default(),
    );
    (srv, [a, b, c])
}

/// INFO/GO option data: name, then the information requests.
fn info_data(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut d = name_data(name);
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// What INFO/GO reported: final reply type, size and flags (from NBD_INFO_EXPORT), and the
/// NAME and DESCRIPTION strings if sent.
#[derive(Debug, PartialEq)]
struct Info {
    last: u32,
    size: Option<u64>,
    flags: Option<u16>,
    name: Option<String>,
    description: Option<String>,
}

fn info(r: &mut Raw, opt: u32, name: &str) -> Info {
    let replies = r.opt_all(opt, &info_data(name, &[INFO_NAME, INFO_DESCRIPTION]));
    let mut out = Info {
        last: replies.last().unwrap().0,
        size: None,
        flags: None,
        name: None,
        description: None,
    };
    for (rt, d) in &replies {
        if *rt != REP_INFO {
            continue;
        }
        match u16::from_be_bytes([d[0], d[1]]) {
            0 => {
                out.size = Some(u64::from_be_bytes(d[2..10].try_into().unwrap()));
                out.flags = Some(u16::from_be_bytes([d[10], d[11]]));
            }
            INFO_NAME => out.name = Some(String::from_utf8(d[2..].to_vec()).unwrap()),
            INFO_DESCRIPTION => out.description = Some(String::from_utf8(d[2..].to_vec()).unwrap()),
            t => panic!("unexpected info type {t}"),
        }
    }
    out
}

#[test]
fn list_names_every_export_in_order_with_descriptions() {
    let (srv, _) = three();
    let mut r = Raw::connect(&srv.sock, 3);
    let replies = r.opt_all(OPT_LIST, &[]);
    assert_eq!(
        replies.len(),
        4,
        "three SERVER replies and an ACK: {replies:?}"
    );
    assert_eq!(replies[3], (REP_ACK, vec![]));
    let listed: Vec<(String, String)> = replies[..3]
        .iter()
        .map(|(rt, d)| {
            assert_eq!(*rt, REP_SERVER);
            let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
            (
                String::from_utf8(d[4..4 + n].to_vec()).unwrap(),
                String::from_utf8(d[4 + n..].to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".into(), "volume A".into()),
            ("b".into(), "volume B".into()),
            ("c".into(), String::new()),
        ]
    );
    // LIST with data is still ERR_INVALID, and the session goes on
    assert_eq!(r.opt_all(OPT_LIST, b"x")[0].0, REP_ERR_INVALID);
    assert_eq!(info(&mut r, OPT_INFO, "c").size, Some(3 * MIB as u64));
    srv.stop();
}

#[test]
fn info_go_and_export_name_select_by_name() {
    let (srv, _) = three();
    let mut r = Raw::connect(&srv.sock, 3);
    // INFO per name: its own size, flags, name and description
    let a = info(&mut r, OPT_INFO, "a");
    let b = info(&mut r, OPT_INFO, "b");
    let c = info(&mut r, OPT_INFO, "c");
    assert_eq!(a.last, REP_ACK);
    assert_eq!((a.size, a.name.as_deref()), (Some(MIB as u64), Some("a")));
    assert_eq!(a.description.as_deref(), Some("volume A"));
    assert_eq!(
        (b.size, b.name.as_deref()),
        (Some(2 * MIB as u64), Some("b"))
    );
    assert_eq!(b.description.as_deref(), Some("volume B"));
    assert_eq!(
        (c.size, c.description.as_deref()),
        (Some(3 * MIB as u64), None)
    );
    assert_eq!(a.flags.unwrap() & TFLAG_READ_ONLY, 0);
    assert_ne!(b.flags.unwrap() & TFLAG_READ_ONLY, 0, "b is read-only");
    assert_eq!(c.flags.unwrap() & TFLAG_READ_ONLY, 0);
    // "" is the first export, and reports its real name
    assert_eq!(info(&mut r, OPT_INFO, ""), a);
    // INFO then GO on the same name report the same thing (MUST), then serve that export
    assert_eq!(info(&mut r, OPT_GO, "c"), c);
    assert_eq!(r.read(0, 4096), vec![0xcc; 4096]);
    assert_eq!(r.read(3 * MIB as u64 - 512, 512), vec![0xcc; 512]);
    r.request(0, CMD_READ, 7, 3 * MIB as u64, 512); // past the end of c
    assert_eq!(r.reply().unwrap(), (EINVAL, 7));
    r.request(0, CMD_DISC, 0, 0, 0);

    // EXPORT_NAME per name: the size of that export, 10-byte reply with NO_ZEROES
    for (name, size, byte) in [("b", 2 * MIB, 0xbb), ("", MIB, 0xaa), ("c", 3 * MIB, 0xcc)] {
        let mut r = Raw::connect(&srv.sock, 3);
        r.send_opt(OPT_EXPORT_NAME, name.as_bytes());
        let mut rep = [0u8; 10];
        r.s.read_exact(&mut rep).unwrap();
        assert_eq!(
            u64::from_be_bytes(rep[0..8].try_into().unwrap()),
            size as u64
        );
        let flags = u16::from_be_bytes([rep[8], rep[9]]);
        assert_eq!(flags & TFLAG_READ_ONLY != 0, name == "b", "{name:?}");
        assert_eq!(r.read(512, 512), vec![byte; 512], "{name:?}");
        r.request(0, CMD_DISC, 0, 0, 0);
    }
    srv.stop();
}

#[test]
fn unknown_names_get_err_unknown_or_a_hard_close() {
    let (srv, _) = three();
    let mut r = Raw::connect(&srv.sock, 3);
    r.opt_all(OPT_STRUCTURED_REPLY, &[]);
    // names differing by case, by a prefix or a suffix select nothing
    for name in ["A", "ab", "d", " a", "a\0"] {
        for opt in [OPT_INFO, OPT_GO] {
            let rep = r.opt_all(opt, &info_data(name, &[]));
            assert_eq!(rep.len(), 1, "{name:?}: {rep:?}");
            assert_eq!(rep[0].0, REP_ERR_UNKNOWN, "{name:?}");
        }
        for opt in [OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT] {
            let rep = r.opt_all(opt, &meta_data(name, &["base:allocation"]));
            assert_eq!(rep.len(), 1, "{name:?}: {rep:?}");
            assert_eq!(rep[0].0, REP_ERR_UNKNOWN, "{name:?}");
        }
    }
    // the session carries on: GO on a real name works
    assert_eq!(info(&mut r, OPT_GO, "b").last, REP_ACK);
    r.request(0, CMD_DISC, 0, 0, 0);
    assert!(r.closed());
    // EXPORT_NAME cannot fail with an error: MUST close
    let mut r = Raw::connect(&srv.sock, 3);
    r.send_opt(OPT_EXPORT_NAME, b"nope");
    assert!(r.closed(), "EXPORT_NAME for an unknown name must close");
    assert_serving_export(&srv, "c");
    srv.stop();
}

/// GO on `name`, write and read back 4 KiB at the end of it.
fn assert_serving_export(srv: &TestServer, name: &str) {
    let mut r = Raw::connect(&srv.sock, 3);
    let i = info(&mut r, OPT_GO, name);
    assert_eq!(i.last, REP_ACK);
    let end = i.size.unwrap() - 4096;
    r.write(5, end, &[0x5a; 4096]);
    assert_eq!(r.reply().unwrap(), (0, 5));
    assert_eq!(r.read(end, 4096), vec![0x5a; 4096]);
    r.request(0, CMD_DISC, 0, 0, 0);
}

/// SR, SET_META_CONTEXT on `set_on`, then GO on `go_on`: is BLOCK_STATUS allowed?
fn block_status_after(srv: &TestServer, set_on: &str, go_on: &str) -> bool {
    let mut r = Raw::connect(&srv.sock, 3);
    r.opt_all(OPT_STRUCTURED_REPLY, &[]);
    let rep = r.opt_all(
        OPT_SET_META_CONTEXT,
        &meta_data(set_on, &["base:allocation"]),
    );
    assert_eq!(rep.len(), 2, "{rep:?}");
    assert_eq!(rep[0].0, REP_META_CONTEXT);
    assert_eq!(info(&mut r, OPT_GO, go_on).last, REP_ACK);
    r.request(0, CMD_BLOCK_STATUS, 1, 0, 4096);
    let chunks = r.structured_reply();
    r.request(0, CMD_DISC, 0, 0, 0);
    match chunks[0].rtype {
        REPLY_TYPE_BLOCK_STATUS => true,
        REPLY_TYPE_ERROR => {
            assert_eq!(chunks[0].error().0, EINVAL);
            false
        }
        t => panic!("unexpected chunk type {t}"),
    }
}

#[test]
fn meta_contexts_per_export() {
    let (srv, _) = three();
    // every export lists base:allocation
    let mut r = Raw::connect(&srv.sock, 3);
    for name in ["a", "b", "c", ""] {
        let rep = r.opt_all(OPT_LIST_META_CONTEXT, &meta_data(name, &[]));
        assert_eq!(rep.len(), 2, "{name:?}: {rep:?}");
        assert_eq!(&rep[0].1[4..], b"base:allocation");
    }
    drop(r);
    // the selection holds for the export it named, "" and the first export's name alike
    assert!(block_status_after(&srv, "b", "b"));
    assert!(block_status_after(&srv, "", "a"));
    assert!(block_status_after(&srv, "a", ""));
    // ... and not for another export (proto.md NBD_OPT_SET_META_CONTEXT)
    assert!(!block_status_after(&srv, "a", "b"));
    assert!(!block_status_after(&srv, "c", ""));
    srv.stop();
}

#[test]
fn read_only_and_read_write_exports_in_one_server() {
    let (srv, [a, b, c]) = three();
    let go = |name: &str| {
        let mut r = Raw::connect(&srv.sock, 3);
        assert_eq!(info(&mut r, OPT_GO, name).last, REP_ACK);
        r
    };
    let (mut ra, mut rb, mut rc) = (go("a"), go("b"), go("c"));
    ra.write(1, 4096, &[1; 4096]);
    rb.write(2, 4096, &[2; 4096]);
    rc.write(3, 4096, &[3; 4096]);
    assert_eq!(ra.reply().unwrap(), (0, 1));
    assert_eq!(rb.reply().unwrap(), (EPERM, 2), "b is read-only");
    assert_eq!(rc.reply().unwrap(), (0, 3));
    rb.request(0, CMD_WRITE_ZEROES, 4, 0, 4096);
    assert_eq!(rb.reply().unwrap(), (EPERM, 4));
    rb.request(0, CMD_FLUSH, 5, 0, 0);
    assert_eq!(
        rb.reply().unwrap(),
        (0, 5),
        "FLUSH is fine on a read-only export"
    );
    // each write landed in its own export only
    assert_eq!(a.snapshot(4096, 4096), vec![1; 4096]);
    assert_eq!(b.snapshot(4096, 4096), vec![0xbb; 4096]);
    assert_eq!(c.snapshot(4096, 4096), vec![3; 4096]);
    assert_eq!(rb.read(4096, 4096), vec![0xbb; 4096]);
    assert_eq!(ra.read(4096, 4096), vec![1; 4096]);
    for r in [&mut ra, &mut rb, &mut rc] {
        r.request(0, CMD_DISC, 0, 0, 0);
        assert!(r.closed());
    }
    let before: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|e| e.flushes.load(Ordering::SeqCst))
        .collect();
    srv.stop();
    for (e, n) in [&a, &b, &c].iter().zip(before) {
        assert!(
            e.flushes.load(Ordering::SeqCst) > n,
            "every export is flushed at shutdown"
        );
    }
}

/// `serve` with these exports must fail before binding anything.
fn refused(exports: Vec<(ExportConfig, Arc<dyn BlockExport>)>) -> NbdError {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(serve(
            vec![Listen::Unix(sock.clone())],
            exports,
            ServerOptions::default(),
            std::future::pending(),
        ))
        .expect_err("serve must refuse these exports");
    assert!(!sock.exists(), "nothing is bound for refused exports");
    e
}

#[test]
fn duplicate_empty_and_overlong_names_are_refused_before_serving() {
    let m = || -> Arc<dyn BlockExport> { MemExport::new(MIB, 512) };
    let e = refused(vec![
        (cfg("a", None, false), m()),
        (cfg("a", None, true), m()),
    ]);
    assert!(
        matches!(e, NbdError::DuplicateExport(ref n) if n == "a"),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"a\""), "{e}");
    // "" always selects the first export, so a later export cannot be named ""
    let e = refused(vec![
        (cfg("a", None, false), m()),
        (cfg("", None, false), m()),
    ]);
    assert!(
        matches!(e, NbdError::DuplicateExport(ref n) if n.is_empty()),
        "{e:?}"
    );
    let e = refused(vec![(cfg(&"n".repeat(4097), None, false), m())]);
    assert!(matches!(e, NbdError::NameTooLong(4097)), "{e:?}");
    assert!(matches!(refused(vec![]), NbdError::NoExports));
    // a first export named "" is fine: it is the default export
    let srv = TestServer::start_many(
        vec![(cfg("", None, false), MemExport::new(MIB, 512))],
        ServerOptions::default(),
    );
    let mut r = Raw::connect(&srv.sock, 3);
    assert_eq!(info(&mut r, OPT_INFO, "").size, Some(MIB as u64));
    srv.stop();
}

/// `NBD_REP_ERR_POLICY`: GO refused because every established slot is taken.
const REP_ERR_POLICY: u32 = (1 << 31) | 2;

#[test]
fn max_connections_counts_only_connections_past_the_handshake() {
    let srv = TestServer::start_many(
        vec![(cfg(EXPORT, None, false), MemExport::new(4 * MIB, 512))],
        ServerOptions {
            max_connections: 2,
            ..ServerOptions::default()
        },
    );
    let mut one = Raw::connect_when_admitted(&srv.sock, 3);
    assert_eq!(one.info_or_go(OPT_GO).0, REP_ACK);
    // Connections still negotiating do not take established slots: many more are greeted.
    let negotiating: Vec<Raw> = (0..5).map(|_| Raw::connect(&srv.sock, 3)).collect();
    let mut two = Raw::connect(&srv.sock, 3);
    assert_eq!(two.info_or_go(OPT_GO).0, REP_ACK);
    // Both slots are taken: the third GO is refused (ERR_POLICY) and the connection closed.
    let mut three = Raw::connect(&srv.sock, 3);
    assert_eq!(three.info_or_go(OPT_GO), (REP_ERR_POLICY, None));
    assert!(three.closed(), "the third connection is closed");
    // the first two carry on
    one.write(1, 0, &[7; 4096]);
    assert_eq!(one.reply().unwrap(), (0, 1));
    assert_eq!(two.read(0, 4096), vec![7; 4096]);
    // closing one frees its slot (the server notices the close asynchronously)
    one.request(0, CMD_DISC, 0, 0, 0);
    assert!(one.closed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Raw::connect(&srv.sock, 3).info_or_go(OPT_GO).0 != REP_ACK {
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(two.read(0, 4096), vec![7; 4096]);
    drop(negotiating);
    srv.stop();
}

#[test]
fn max_handshakes_refuses_newcomers_and_evicts_a_silent_handshake() {
    let srv = TestServer::start_many(
        vec![(cfg(EXPORT, None, false), MemExport::new(MIB, 512))],
        ServerOptions {
            max_handshakes: 1,
            ..ServerOptions::default()
        },
    );
    // (the start-up probe's connection may hold the slot for a moment)
    let mut first = Raw::connect_when_admitted(&srv.sock, 3);
    // Its handshake slot is the only one and it just spoke: a newcomer is closed at once.
    assert!(!Raw::greeted(&srv.sock), "over --max-handshakes: closed");
    // Once it has been silent for a second, a newcomer takes its slot and it is closed.
    std::thread::sleep(Duration::from_millis(1200));
    let mut second = Raw::connect(&srv.sock, 3);
    assert!(first.closed(), "the silent handshake was evicted");
    // The newcomer finishes its handshake and is served; its handshake slot is free again.
    assert_eq!(second.info_or_go(OPT_GO).0, REP_ACK);
    second.write(1, 0, &[3; 4096]);
    assert_eq!(second.reply().unwrap(), (0, 1));
    assert_serving(&srv.sock);
    srv.stop();
}

#[test]
fn max_connections_zero_means_no_limit() {
    let srv = TestServer::start_many(
        vec![(cfg(EXPORT, None, false), MemExport::new(MIB, 512))],
        ServerOptions {
            max_connections: 0,
            ..ServerOptions::default()
        },
    );
    let conns: Vec<Raw> = (0..150).map(|_| Raw::connect(&srv.sock, 3)).collect();
    assert_serving(&srv.sock);
    drop(conns);
    srv.stop();
}
