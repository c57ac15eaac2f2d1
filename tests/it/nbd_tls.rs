//! TLS (proto.md "TLS support"): raw-socket checks of every option before and after
//! `STARTTLS` in each mode against the in-process server (rustls as the client), and the real
//! `nbdcrypt open` / `demo` with `--tls*` against libnbd (`nbdinfo`, `nbdcopy` with `nbds://`)
//! and qemu (`tls-creds-x509`). Certificates are made by the `openssl` command per test.
//!
//! Over 800 lines: every TLS mode against three clients (rustls, libnbd, qemu), with the
//! certificate fixtures they share.

use crate::common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::nbd::*;
use common::tls::*;
use common::{format_cheap, free_port, key_file, nbd_tool, nbdcrypt, ok, require, run, Server};
use nbdcrypt::nbd::{TlsConfig, TlsError, TlsFiles, TlsMode};

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_PEEK_EXPORT: u32 = 4;
const OPT_EXTENDED_HEADERS: u32 = 11;
const REP_SERVER: u32 = 2;
const TFLAGS_PLAIN: u16 = 0x0d6d;
const TFLAGS_STRUCTURED: u16 = 0x0ded;

/// PKI in a temp dir plus an in-process server (1 MiB RAM export, 512-byte blocks) in `mode`,
/// asking for client certificates signed by `ca` when `client_ca`.
struct Fixture {
    _dir: tempfile::TempDir,
    pki: Pki,
    srv: TestServer,
}

fn fixture(mode: TlsMode, client_ca: bool) -> Fixture {
    let dir = common::tempdir();
    let pki = Pki::new(dir.path());
    let files = TlsFiles {
        cert: pki.cert("server"),
        key: pki.key("server"),
        ca: client_ca.then(|| pki.cert("ca")),
    };
    let tls = TlsConfig::from_files(mode, &files).expect("TLS config");
    assert_eq!(tls.mode(), mode);
    let srv = TestServer::start_tls(MemExport::new(MIB, 512), false, tls);
    Fixture {
        _dir: dir,
        pki,
        srv,
    }
}

fn info_data() -> Vec<u8> {
    let mut d = name_data(EXPORT);
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

/// Every option a client may send before TLS, with well-formed data, so that only the TLS
/// policy decides the answer.
fn all_options() -> Vec<(u32, Vec<u8>)> {
    vec![
        (OPT_LIST, vec![]),
        (OPT_PEEK_EXPORT, vec![]),
        (OPT_INFO, info_data()),
        (OPT_GO, info_data()),
        (OPT_STRUCTURED_REPLY, vec![]),
        (
            OPT_LIST_META_CONTEXT,
            meta_data(EXPORT, &["base:allocation"]),
        ),
        (
            OPT_SET_META_CONTEXT,
            meta_data(EXPORT, &["base:allocation"]),
        ),
        (OPT_EXTENDED_HEADERS, vec![]),
        (99, b"unknown option data".to_vec()),
    ]
}

/// Read until the server closes; panics if it stays open (10 s read timeout). Returns the bytes.
fn read_until_closed(s: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the server kept the connection open"
                );
                return all;
            }
        }
    }
}

/// The TLS session must fail: either the handshake or the first option over it.
fn assert_tls_refused(r: std::io::Result<TlsRaw>, what: &str) {
    let mut t = match r {
        Err(_) => return,
        Ok(t) => t,
    };
    // TLS 1.3: the client finishes its handshake before the server has checked the client's
    // certificate; the server's alert arrives on the first read.
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&OPT_LIST.to_be_bytes());
    hdr.extend_from_slice(&0u32.to_be_bytes());
    let _ = t.s.write_all(&hdr);
    let mut b = [0u8; 20];
    assert!(
        t.s.read_exact(&mut b).is_err(),
        "{what}: the server answered over TLS: {b:?}"
    );
}

#[test]
fn forced_tls_every_option_before_and_after_starttls() {
    let f = fixture(TlsMode::Require, false);
    let sock = &f.srv.sock;
    let mut r = Raw::connect(sock, 3);
    // Before TLS: every option but STARTTLS and ABORT is ERR_TLS_REQD, the data consumed, the
    // connection kept.
    for (opt, data) in all_options() {
        r.send_opt(opt, &data);
        let (o, rt, msg) = r.opt_reply().unwrap();
        assert_eq!((o, rt), (opt, REP_ERR_TLS_REQD), "option {opt}");
        assert!(String::from_utf8(msg).unwrap().contains("STARTTLS"));
    }
    // oversize data (discarded) gets the same answer
    r.send_opt(OPT_LIST, &vec![0u8; 70 << 10]);
    assert_eq!(r.opt_reply().unwrap().1, REP_ERR_TLS_REQD);
    // STARTTLS with data is invalid (proto.md "NBD_OPT_STARTTLS"), and not the end
    r.send_opt(OPT_STARTTLS, b"x");
    assert_eq!(r.opt_reply().unwrap().1, REP_ERR_INVALID);
    let mut t = r.starttls(f.pki.client_config(None, false)).unwrap();
    // Over TLS: never ERR_TLS_REQD; every option answered as without TLS.
    let list = t.opt_all(OPT_LIST, &[]);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        (list[0].0, &list[0].1[4..7]),
        (REP_SERVER, EXPORT.as_bytes())
    );
    for opt in [OPT_PEEK_EXPORT, OPT_EXTENDED_HEADERS, 99] {
        assert_eq!(t.opt_all(opt, b"")[0].0, REP_ERR_UNSUP, "option {opt}");
    }
    assert_eq!(t.info_or_go(OPT_INFO), (REP_ACK, Some(TFLAGS_PLAIN)));
    assert_eq!(
        t.opt_all(OPT_STARTTLS, &[])[0].0,
        REP_ERR_INVALID,
        "a second STARTTLS"
    );
    let lm = t.opt_all(OPT_LIST_META_CONTEXT, &meta_data(EXPORT, &["base:"]));
    assert_eq!((lm.len(), lm[0].0), (2, REP_META_CONTEXT));
    let flags = t.go_structured_here(true);
    assert_eq!(flags, TFLAGS_STRUCTURED);

    // Every command over TLS, structured replies.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
    t.write(1, 4096, &data);
    let c = t.structured_reply();
    assert_eq!((c.len(), c[0].rtype, c[0].cookie), (1, REPLY_TYPE_NONE, 1));
    t.request(CMD_FLAG_DF, CMD_READ, 2, 4096, 8192);
    let c = t.structured_reply();
    assert_eq!((c.len(), c[0].rtype), (1, REPLY_TYPE_OFFSET_DATA));
    assert_eq!(&c[0].payload[8..], &data[..]);
    t.request(0, CMD_WRITE_ZEROES, 3, 4096, 512);
    assert_eq!(t.structured_reply()[0].rtype, REPLY_TYPE_NONE);
    t.request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 4, 4096, 512);
    assert_eq!(t.structured_reply()[0].error().0, ENOTSUP);
    for (cmd, cookie) in [(CMD_FLUSH, 5u64), (CMD_TRIM, 6), (CMD_CACHE, 7)] {
        let len = if cmd == CMD_FLUSH { 0 } else { 4096 };
        let off = if cmd == CMD_FLUSH { 0 } else { 4096 };
        t.request(0, cmd, cookie, off, len);
        let c = t.structured_reply();
        assert_eq!(
            (c[0].rtype, c[0].cookie),
            (REPLY_TYPE_NONE, cookie),
            "{cmd}"
        );
    }
    t.request(0, CMD_BLOCK_STATUS, 8, 0, 65536);
    assert_eq!(t.structured_reply()[0].rtype, REPLY_TYPE_BLOCK_STATUS);
    t.request(0, CMD_READ, 9, MIB as u64, 512);
    assert_eq!(t.structured_reply()[0].error().0, EINVAL);
    t.request(0, CMD_DISC, 10, 0, 0);
    // DISC: no reply, TLS shut down properly (close_notify: rustls reports a clean EOF).
    let mut rest = Vec::new();
    t.s.read_to_end(&mut rest)
        .expect("TLS closed without close_notify");
    assert!(rest.is_empty());
    let mut want = data.clone();
    want[..512].fill(0);
    assert_eq!(f.srv.export.snapshot(4096, 8192), want);

    // ABORT before TLS: ACK.
    let mut r = Raw::connect(sock, 3);
    assert_eq!(r.opt_all(OPT_ABORT, &[]), vec![(REP_ACK, vec![])]);
    // EXPORT_NAME before TLS cannot be refused with an error: the connection is closed,
    // from a fixed-newstyle client and from an old one alike.
    for cflags in [3u32, 0] {
        let mut r = Raw::connect(sock, cflags);
        r.send_opt(OPT_EXPORT_NAME, EXPORT.as_bytes());
        assert!(
            r.closed(),
            "EXPORT_NAME without TLS (client flags {cflags})"
        );
    }
    assert_eq!(
        f.srv.export.snapshot(4096, 8192),
        want,
        "nothing else wrote"
    );
}

#[test]
fn export_name_over_tls_1_2() {
    let f = fixture(TlsMode::Require, false);
    let r = Raw::connect(&f.srv.sock, 3); // NO_ZEROES
    let mut t = r.starttls(f.pki.client_config(None, true)).unwrap();
    assert_eq!(
        t.s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    t.send_opt(OPT_EXPORT_NAME, b"");
    let mut rep = [0u8; 10];
    t.s.read_exact(&mut rep).unwrap();
    assert_eq!(
        u64::from_be_bytes(rep[0..8].try_into().unwrap()),
        MIB as u64
    );
    assert_eq!(u16::from_be_bytes([rep[8], rep[9]]), TFLAGS_PLAIN);
    t.round_trip(MIB as u64);
    t.request(0, CMD_DISC, 0, 0, 0);
    let mut rest = Vec::new();
    t.s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn state_negotiated_before_starttls_is_forgotten() {
    let f = fixture(TlsMode::On, false);
    let sock = &f.srv.sock;
    // structured replies and base:allocation before STARTTLS ...
    let mut r = Raw::connect(sock, 3);
    assert_eq!(
        r.opt_all(OPT_STRUCTURED_REPLY, &[]),
        vec![(REP_ACK, vec![])]
    );
    let sm = r.opt_all(
        OPT_SET_META_CONTEXT,
        &meta_data(EXPORT, &["base:allocation"]),
    );
    assert_eq!(sm.len(), 2);
    assert_eq!(r.info_or_go(OPT_INFO), (REP_ACK, Some(TFLAGS_STRUCTURED)));
    let mut t = r.starttls(f.pki.client_config(None, false)).unwrap();
    // ... are gone after it: SET_META_CONTEXT needs structured replies again, GO reports no
    // SEND_DF, READ gets a simple reply and BLOCK_STATUS has no context.
    assert_eq!(
        t.opt_all(
            OPT_SET_META_CONTEXT,
            &meta_data(EXPORT, &["base:allocation"])
        )[0]
        .0,
        REP_ERR_INVALID
    );
    let (size, flags) = t.go_export();
    assert_eq!((size, flags), (MIB as u64, TFLAGS_PLAIN));
    t.round_trip(size); // simple replies
    t.request(0, CMD_BLOCK_STATUS, 7, 0, 512);
    assert_eq!(t.reply().unwrap(), (EINVAL, 7));
    t.request(0, CMD_DISC, 0, 0, 0);

    // Structured replies may be negotiated again over TLS (not "already negotiated").
    let mut r = Raw::connect(sock, 3);
    assert_eq!(
        r.opt_all(OPT_STRUCTURED_REPLY, &[]),
        vec![(REP_ACK, vec![])]
    );
    let mut t = r.starttls(f.pki.client_config(None, false)).unwrap();
    assert_eq!(t.go_structured_here(true), TFLAGS_STRUCTURED);
    t.request(0, CMD_BLOCK_STATUS, 8, 0, 512);
    assert_eq!(t.structured_reply()[0].rtype, REPLY_TYPE_BLOCK_STATUS);
    t.request(0, CMD_DISC, 0, 0, 0);
}

#[test]
fn tls_on_serves_plain_and_tls_clients() {
    let f = fixture(TlsMode::On, false);
    let sock = &f.srv.sock;
    // plain text: every option as on a NOTLS server
    let mut r = Raw::connect(sock, 3);
    assert_eq!(r.opt_all(OPT_LIST, &[]).len(), 2);
    assert_eq!(r.info_or_go(OPT_INFO), (REP_ACK, Some(TFLAGS_PLAIN)));
    drop(r);
    assert_serving(sock);
    // STARTTLS with data refused, then a proper STARTTLS on the same connection
    let mut r = Raw::connect(sock, 3);
    r.send_opt(OPT_STARTTLS, b"data");
    assert_eq!(r.opt_reply().unwrap().1, REP_ERR_INVALID);
    let mut t = r.starttls(f.pki.client_config(None, false)).unwrap();
    let (size, _) = t.go_export();
    t.round_trip(size);
    t.request(0, CMD_DISC, 0, 0, 0);
    // A NOTLS server still answers STARTTLS with ERR_UNSUP (tests/nbd_raw.rs checks it too).
    let plain = TestServer::start(MemExport::new(MIB, 512), false);
    let mut r = Raw::connect(&plain.sock, 3);
    assert_eq!(r.opt_all(OPT_STARTTLS, &[])[0].0, REP_ERR_UNSUP);
}

#[test]
fn failed_handshakes_end_only_their_connection() {
    let f = fixture(TlsMode::Require, true);
    let sock = &f.srv.sock;
    // A: a client with a certificate from the trusted CA, in transmission.
    let mut a = Raw::connect(sock, 3)
        .starttls(f.pki.client_config(Some("client"), false))
        .unwrap();
    let (size, _) = a.go_export();
    // no client certificate
    assert_tls_refused(
        Raw::connect(sock, 3).starttls(f.pki.client_config(None, false)),
        "no client certificate",
    );
    // a client certificate from another CA
    assert_tls_refused(
        Raw::connect(sock, 3).starttls(f.pki.client_config(Some("rogue-client"), false)),
        "certificate from another CA",
    );
    // TLS 1.2 without a client certificate
    assert_tls_refused(
        Raw::connect(sock, 3).starttls(f.pki.client_config(None, true)),
        "TLS 1.2 without a client certificate",
    );
    // plain text after the ACK: an option header is no TLS record
    let mut r = Raw::connect(sock, 3);
    r.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(r.opt_reply().unwrap().1, REP_ACK);
    r.send_opt(OPT_LIST, &[]);
    let got = read_until_closed(&mut r.s);
    assert!(
        !got.windows(8).any(|w| w == OPT_REPLY_MAGIC.to_be_bytes()),
        "an NBD reply in plain text after STARTTLS: {got:?}"
    );
    // garbage shaped like a TLS record
    let mut r = Raw::connect(sock, 3);
    r.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(r.opt_reply().unwrap().1, REP_ACK);
    let mut junk = vec![0x16, 0x03, 0x01, 0x01, 0x00];
    junk.extend((0..256u32).map(|i| (i * 37) as u8));
    r.s.write_all(&junk).unwrap();
    read_until_closed(&mut r.s);
    // hang-up right after the ACK
    let mut r = Raw::connect(sock, 3);
    r.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(r.opt_reply().unwrap().1, REP_ACK);
    drop(r);
    // A still works, and so does a new good client.
    a.round_trip(size);
    a.request(0, CMD_DISC, 0, 0, 0);
    let mut b = Raw::connect(sock, 3)
        .starttls(f.pki.client_config(Some("client"), true))
        .unwrap();
    let (size, _) = b.go_export();
    b.round_trip(size);
    b.request(0, CMD_DISC, 0, 0, 0);
}

#[test]
fn keys_as_openssl_writes_them_and_typed_file_errors() {
    let dir = common::tempdir();
    let pki = Pki::new(dir.path());
    for kind in [
        KeyKind::RsaPkcs8,
        KeyKind::RsaPkcs1,
        KeyKind::EcSec1,
        KeyKind::EcPkcs8,
    ] {
        let name = format!("srv-{kind:?}");
        let (cert, key) = pki.leaf(&name, "ca", kind, Role::Server);
        let files = TlsFiles {
            cert,
            key,
            ca: None,
        };
        let tls = TlsConfig::from_files(TlsMode::Require, &files)
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let srv = TestServer::start_tls(MemExport::new(MIB, 512), false, tls);
        let mut t = Raw::connect(&srv.sock, 3)
            .starttls(pki.client_config(None, false))
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let (size, _) = t.go_export();
        t.round_trip(size);
    }

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let bad_der = dir.path().join("bad-der.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    let load = |cert: &Path, key: &Path, ca: Option<&Path>| {
        TlsConfig::from_files(
            TlsMode::On,
            &TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                ca: ca.map(Path::to_owned),
            },
        )
        .expect_err("must fail")
    };
    let (cert, key) = (pki.cert("server"), pki.key("server"));
    let cases: Vec<(TlsError, &Path, &str)> = vec![
        (load(&missing, &key, None), &missing, "cannot read"),
        (load(&garbage, &key, None), &garbage, "no PEM certificate"),
        (load(&key, &key, None), &key, "no PEM certificate"),
        (load(&cert, &cert, None), &cert, "no PEM private key"),
        (load(&cert, &missing, None), &missing, "cannot read"),
        (
            load(&cert, &pki.key("client"), None),
            &cert,
            "does not belong",
        ),
        (load(&bad_der, &key, None), &bad_der, "TLS certificate"),
        (load(&cert, &key, Some(&garbage)), &garbage, "CA"),
        (load(&cert, &key, Some(&bad_der)), &bad_der, "CA"),
        (load(&cert, &key, Some(&missing)), &missing, "cannot read"),
    ];
    for (e, path, text) in cases {
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(text),
            "{msg:?} should name {} and say {text:?}",
            path.display()
        );
    }
}

// ---- the real binary with libnbd and qemu ----

/// A formatted 8 MiB volume `vol` in `dir` and the key file.
fn volume(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = key_file(dir);
    let img = dir.join("vol.img");
    format_cheap(&img, &key, "24M", 512, "pbkdf2");
    (img, key)
}

/// Certificates, a formatted volume `vol`, and `nbdcrypt open` serving it on a TCP port (and
/// its Unix socket) with `--tls-cert`/`--tls-key` of `server`, `--tls-ca` of `ca` if
/// `client_ca`, and `flags`.
struct Served {
    dir: tempfile::TempDir,
    pki: Pki,
    img: std::path::PathBuf,
    key: std::path::PathBuf,
    port: u16,
    srv: Server,
}

fn open_tls(client_ca: bool, flags: &[&str]) -> Served {
    let dir = common::tempdir();
    let pki = Pki::new(dir.path());
    let (img, key) = volume(dir.path());
    let port = free_port();
    let mut args: Vec<String> = vec!["--listen".into(), format!("127.0.0.1:{port}")];
    let mut files = vec![
        ("--tls-cert", pki.cert("server")),
        ("--tls-key", pki.key("server")),
    ];
    if client_ca {
        files.push(("--tls-ca", pki.cert("ca")));
    }
    for (flag, path) in files {
        args.push(flag.to_string());
        args.push(path.display().to_string());
    }
    args.extend(flags.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = Server::start(&img, &key, &args);
    Served {
        dir,
        pki,
        img,
        key,
        port,
        srv,
    }
}

fn nbds_uri(port: u16, certs: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{port}/vol?tls-certificates={}",
        certs.display()
    )
}

fn nbdinfo_json(uri: &str) -> serde_json::Value {
    let out = ok(nbd_tool("nbdinfo").args(["--json", uri]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn nbdinfo_and_nbdcopy_over_nbds() {
    // --tls-cert/--tls-key without --tls: TLS required
    let Served {
        dir,
        pki,
        img,
        key,
        port,
        mut srv,
    } = open_tls(false, &[]);
    let certs = pki.client_dir("libnbd", None);
    let uri = nbds_uri(port, &certs);
    let v = nbdinfo_json(&uri);
    assert_eq!(v["TLS"], true, "{v}");
    assert_eq!(v["exports"][0]["export-size"], 8u64 << 20, "{v}");
    assert_eq!(v["exports"][0]["export-name"], "vol", "{v}");
    // plain text is refused with ERR_TLS_REQD (libnbd's debug output shows our message), over
    // TCP and the Unix socket
    for plain in [format!("nbd://127.0.0.1:{port}/vol"), srv.uri()] {
        let out = run(nbd_tool("nbdinfo").env("LIBNBD_DEBUG", "1").arg(&plain));
        assert!(!out.status.success(), "plain {plain} was served");
        let err = common::stderr(&out);
        assert!(
            err.contains("server error message: TLS is required"),
            "{plain}: {err}"
        );
    }
    // nbdcopy (4 TLS connections: CAN_MULTI_CONN) both ways
    let src = dir.path().join("src.bin");
    std::fs::write(&src, common::pattern(8 << 20, 7)).unwrap();
    ok(nbd_tool("nbdcopy").args(["--flush", src.to_str().unwrap(), &uri]));
    let out = dir.path().join("out.bin");
    ok(nbd_tool("nbdcopy").args([&uri, out.to_str().unwrap()]));
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
        "nbdcopy over TLS round trip differs"
    );
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    // ... and the data is really in the volume: read it back in plain text after a restart
    // without TLS.
    let srv = Server::start(&img, &key, &[]);
    let back = dir.path().join("back.bin");
    ok(nbd_tool("nbdcopy").args([&srv.uri(), back.to_str().unwrap()]));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());
}

#[test]
fn tls_on_binary_serves_plain_and_nbds() {
    let Served {
        dir: _dir,
        pki,
        port,
        mut srv,
        ..
    } = open_tls(false, &["--tls", "on"]);
    let v = nbdinfo_json(&format!("nbd://127.0.0.1:{port}/vol"));
    assert_eq!(v["TLS"], false, "{v}");
    let v = nbdinfo_json(&nbds_uri(port, &pki.client_dir("libnbd", None)));
    assert_eq!(v["TLS"], true, "{v}");
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
}

#[test]
fn client_certificates_with_libnbd_and_qemu() {
    let Served {
        dir,
        pki,
        img,
        key,
        port,
        mut srv,
    } = open_tls(true, &["--tls", "require"]);
    let good = pki.client_dir("good", Some("client"));
    let nocert = pki.client_dir("nocert", None);
    let rogue = pki.client_dir("rogue", Some("rogue-client"));
    assert_eq!(nbdinfo_json(&nbds_uri(port, &good))["TLS"], true);
    for bad in [&nocert, &rogue] {
        let out = run(nbd_tool("nbdinfo").arg(nbds_uri(port, bad)));
        assert!(
            !out.status.success(),
            "{} got in: {}",
            bad.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // qemu: tls-creds-x509 with the client certificate
    let qemu_io = require("qemu-io", "qemu-utils");
    let qemu_img = require("qemu-img", "qemu-utils");
    let object = |d: &Path| format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", d.display());
    let opts =
        format!("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=vol,tls-creds=tls0");
    let out = ok(Command::new(&qemu_io).args([
        "--object",
        &object(&good),
        "--image-opts",
        &opts,
        "-c",
        "write -P 0xab 4096 1M",
        "-c",
        "flush",
        "-c",
        "read -P 0xab 4096 1M",
        "-c",
        "write -z 0 4096",
        "-c",
        "read -P 0 0 4096",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let info = ok(Command::new(&qemu_img).args([
        "info",
        "--object",
        &object(&good),
        "--image-opts",
        &opts,
    ]));
    assert!(info.contains("(8388608 bytes)"), "{info}");
    let out = run(Command::new(&qemu_img).args([
        "info",
        "--object",
        &object(&nocert),
        "--image-opts",
        &opts,
    ]));
    assert!(
        !out.status.success(),
        "qemu without a client certificate got in"
    );
    // the refused clients did not disturb the server
    let v = nbdinfo_json(&nbds_uri(port, &good));
    assert_eq!(v["exports"][0]["export-size"], 8u64 << 20);
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    assert!(
        err.contains("TLS handshake failed"),
        "failed handshakes are logged:\n{err}"
    );
    // what qemu wrote is in the volume
    let srv = Server::start(&img, &key, &[]);
    let out = dir.path().join("out.bin");
    ok(nbd_tool("nbdcopy").args([&srv.uri(), out.to_str().unwrap()]));
    let got = std::fs::read(&out).unwrap();
    assert!(got[4096..4096 + (1 << 20)].iter().all(|&b| b == 0xab));
}

#[test]
fn cli_refuses_unusable_tls_flags_before_unlocking() {
    let dir = common::tempdir();
    let pki = Pki::new(dir.path());
    let (img, _key) = volume(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let (cert, key) = (pki.cert("server"), pki.key("server"));
    let s = |p: &Path| p.display().to_string();
    let sock = dir.path().join("s.sock");
    // (flags, text the error line must contain)
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&key),
            ],
            format!("cannot read TLS certificate file {}", s(&missing)),
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&garbage),
                "--tls-key".into(),
                s(&key),
            ],
            format!(
                "TLS certificate file {} contains no PEM certificate",
                s(&garbage)
            ),
        ),
        (
            vec!["--tls-cert".into(), s(&cert), "--tls-key".into(), s(&cert)],
            format!("TLS key file {} contains no PEM private key", s(&cert)),
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&pki.key("client")),
            ],
            "the key does not belong to the certificate".into(),
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&key),
                "--tls-ca".into(),
                s(&garbage),
            ],
            format!("TLS CA file {} contains no PEM certificate", s(&garbage)),
        ),
        (
            vec!["--tls".into(), "require".into()],
            "TLS (require) needs --tls-cert FILE and --tls-key FILE".into(),
        ),
        (
            vec!["--tls-cert".into(), s(&cert)],
            "needs --tls-key FILE".into(),
        ),
        (
            vec!["--tls-ca".into(), s(&pki.cert("ca"))],
            "needs --tls-cert FILE and --tls-key FILE".into(),
        ),
        (
            vec!["--tls".into(), "off".into(), "--tls-cert".into(), s(&cert)],
            "--tls off contradicts".into(),
        ),
        (
            vec![
                "--tls".into(),
                "on".into(),
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&key),
                "--tls-ca".into(),
                s(&pki.cert("ca")),
            ],
            "use --tls require".into(),
        ),
    ];
    for (flags, text) in cases {
        // No --key-file and no stdin: had the passphrase been asked for first, this would be
        // "no key available" (exit 2).
        let out = nbdcrypt()
            .arg("open")
            .arg(&img)
            .arg("--socket")
            .arg(&sock)
            .args(&flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("nbdcrypt: ") && first.contains(&text),
            "{flags:?}: {err}"
        );
        assert!(err.lines().count() <= 2, "one line plus a hint: {err}");
        assert!(!sock.exists(), "{flags:?}: a listener was started");
    }
    // An unknown mode is a usage error: clap's whole message, exit 1, nothing started.
    let out = nbdcrypt()
        .arg("open")
        .arg(&img)
        .arg("--socket")
        .arg(&sock)
        .args(["--tls", "maybe"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown TLS mode"), "{err}");
    assert!(!sock.exists(), "a listener was started");
}

/// `--tls on` would serve plain-text clients that skip the certificate `--tls-ca` asks for:
/// `serve` and `demo` refuse it too, before any passphrase or image (exit 1, one line).
#[test]
fn tls_on_with_a_client_ca_is_refused_by_every_server_command() {
    let dir = common::tempdir();
    let pki = Pki::new(dir.path());
    let (img, key) = volume(dir.path());
    let sock = dir.path().join("s.sock");
    let demo_dir = dir.path().join("demo");
    let tls = |cmd: &mut std::process::Command| {
        cmd.args(["--tls", "on", "--tls-cert"])
            .arg(pki.cert("server"))
            .arg("--tls-key")
            .arg(pki.key("server"))
            .arg("--tls-ca")
            .arg(pki.cert("ca"))
            .stdin(Stdio::null());
    };
    let mut serve = nbdcrypt();
    serve
        .arg("serve")
        .arg("--export")
        .arg(format!("vol={}", img.display()))
        .arg("--key-file")
        .arg(format!("vol={}", key.display()))
        .arg("--socket")
        .arg(&sock);
    let mut demo = nbdcrypt();
    demo.args(["demo", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--dir")
        .arg(&demo_dir);
    for cmd in [&mut serve, &mut demo] {
        tls(cmd);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} started serving instead of refusing");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("nbdcrypt: ")
                && first.contains("--tls-ca")
                && first.contains("use --tls require"),
            "{cmd:?}: {err}"
        );
        assert!(err.lines().count() <= 2, "one line plus a hint: {err}");
    }
    assert!(!sock.exists(), "serve started a listener");
    assert!(!demo_dir.exists(), "demo created its image");
}

#[test]
fn demo_with_tls_prints_commands_that_work() {
    let dir = common::tempdir();
    let pki = Pki::new(dir.path());
    let port = free_port();
    let demo_dir = dir.path().join("demo");
    let mut child = nbdcrypt()
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&demo_dir)
        .arg("--tls-cert")
        .arg(pki.cert("server"))
        .arg("--tls-key")
        .arg(pki.key("server"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The banner comes once the listener is up.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        banner.push_str(&line);
        if n == 0 || line.starts_with("Stop with") {
            break;
        }
    }
    let certs = pki.client_dir("libnbd", None);
    let dir_s = certs.display().to_string();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(banner.contains("TLS: require"), "{banner}");
        let mut ran = 0;
        for line in banner.lines().map(str::trim) {
            if line.starts_with("nbdinfo ") || line.starts_with("qemu-img ") {
                let cmd = line.replace("DIR", &dir_s).replace('\'', "");
                let mut words = cmd.split_whitespace();
                let prog = words.next().unwrap();
                let mut c = if prog == "nbdinfo" {
                    nbd_tool("nbdinfo")
                } else {
                    Command::new(require("qemu-img", "qemu-utils"))
                };
                let out = ok(c.args(words));
                assert!(out.contains("50331648"), "{line}: {out}");
                ran += 1;
            }
        }
        assert_eq!(ran, 2, "an nbdinfo and a qemu-img line:\n{banner}");
        assert!(banner.contains("nbdinfo 'nbds://"), "{banner}");
    }));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = child.wait().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(st.success());
}
