//! The key service's connection bounds against a real `nbdcrypt-keyd serve`
//! (`docs/keyservice-api.md` "Connection bounds"): a flood of stalled connections (TLS
//! complete or not, half a request header) under a small open-file limit does not keep a
//! host out, and a stalled header or a silent connection is closed after its timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use serde_json::json;

use crate::common::keyd::{keyd, Keyd};
use crate::common::tempdir;

const VOL: &str = "5b0e2a4c-7d1e-4f2a-9b3c-0123456789ab";

/// The `host:port` of the service's URL.
fn addr(k: &Keyd) -> String {
    k.url.trim_start_matches("https://").to_string()
}

/// A TLS connection to the service (no client certificate), or `None` if the handshake fails
/// or takes more than a second.
fn tls(k: &Keyd) -> Option<SslStream<TcpStream>> {
    let sock = addr(k).parse().unwrap();
    let tcp = TcpStream::connect_timeout(&sock, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let c = b.build().configure().unwrap().verify_hostname(false);
    c.connect("localhost", tcp).ok()
}

/// Half a request header (no blank line ends it).
const HALF: &[u8] = b"POST /v1/volumes HTTP/1.1\r\nHost: localhost\r\nContent-Len";

/// `nbdcrypt-keyd` under `sh -c 'ulimit -n N'` (soft and hard open-file limit N).
fn keyd_with_fd_limit(n: u32) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
        .arg(keyd().get_program())
        .env("NBDCRYPT_LOG", "warn");
    c
}

#[test]
fn five_hundred_stalled_connections_leave_room_for_a_host() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.admin(&["kek", "create", "k1"]);
    k.host("hostA");
    // 256 descriptors: without a cap fitted under them, 500 connections exhaust them. The
    // timeouts are an hour, so only the cap and eviction can make room.
    k.serve_args(
        keyd_with_fd_limit(256),
        &[
            "--tls-handshake-timeout",
            "3600",
            "--header-read-timeout",
            "3600",
            "--idle-timeout",
            "3600",
        ],
    );
    let r = k.as_host("hostA", "POST", "/v1/volumes", &json!({ "uuid": VOL }));
    assert_eq!(r.status, 200, "{r:?}");
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
    let w = k.as_host(
        "hostA",
        "POST",
        &format!("/v1/volumes/{VOL}/wrap"),
        &json!({"slot": 1, "kek": "k1", "secret": secret}),
    );
    assert_eq!(w.status, 200, "{w:?}");

    // 250 connections that complete TLS and send half a header, 250 that send half a
    // ClientHello; all held open.
    let mut held_tls = Vec::new();
    let mut held_tcp = Vec::new();
    for _ in 0..250 {
        if let Some(mut s) = tls(&k) {
            let _ = s.write_all(HALF);
            held_tls.push(s);
        }
    }
    let sock = addr(&k).parse().unwrap();
    for _ in 0..250 {
        if let Ok(mut t) = TcpStream::connect_timeout(&sock, Duration::from_secs(1)) {
            let _ = t.write_all(&[0x16, 0x03, 0x01, 0x00]);
            held_tcp.push(t);
        }
    }
    assert!(!held_tls.is_empty(), "no stalled TLS connection was made");
    // A stalled connection is evictable after a second.
    std::thread::sleep(Duration::from_millis(1200));

    let cert = k.host_dir("hostA").join("host.pem");
    let key = k.host_dir("hostA").join("host.key");
    let body = json!({"slot": 1, "kek": "k1", "version": 1, "blob": w.body["blob"]}).to_string();
    let t0 = Instant::now();
    let r = k.curl_within(
        5,
        &format!("/v1/volumes/{VOL}/unwrap"),
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
    );
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "unwrap under a stalled flood: {r:?}");
    assert_eq!(r.body["secret"], secret);
    assert!(took < Duration::from_secs(2), "unwrap took {took:?}");
    drop((held_tls, held_tcp));
}

/// Reads from `s` until the server closes it; how long that took (`None`: still open after
/// `limit`).
fn closed_within(s: &mut SslStream<TcpStream>, limit: Duration) -> Option<Duration> {
    s.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

#[test]
fn a_stalled_header_is_closed_after_the_header_read_timeout() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.serve_args(
        keyd(),
        &["--header-read-timeout", "1", "--idle-timeout", "3600"],
    );
    let mut s = tls(&k).expect("TLS handshake");
    s.write_all(HALF).unwrap();
    let took = closed_within(&mut s, Duration::from_secs(6));
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(4)),
        "a half header still open after {took:?}"
    );
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.serve_args(
        keyd(),
        &["--idle-timeout", "1", "--header-read-timeout", "3600"],
    );
    let mut silent = tls(&k).expect("TLS handshake");
    let took = closed_within(&mut silent, Duration::from_secs(6));
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(4)),
        "a silent connection still open after {took:?}"
    );
    // Requests every half second on one connection keep it open past the idle timeout.
    let mut busy = tls(&k).expect("TLS handshake");
    busy.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..5 {
        busy.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = busy.read(&mut buf).expect("reply on a busy connection");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Clients without a certificate that send a request now and then (`GET /v1/health`, open to
/// anyone) and keep their connections cannot hold every slot from hosts: between requests they
/// are evictable at the cap, a host's connection is not.
#[test]
fn anonymous_clients_that_call_now_and_then_leave_room_for_a_host() {
    let dir = tempdir();
    let mut k = Keyd::init(dir.path());
    k.host("hostA");
    k.serve_args(
        keyd(),
        &["--max-connections", "20", "--idle-timeout", "3600"],
    );
    let mut held = Vec::new();
    for _ in 0..40 {
        let Some(mut s) = tls(&k) else { continue };
        if s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 512];
        if matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")) {
            held.push(s); // served, kept alive, idle
        }
    }
    assert!(
        held.len() >= 10,
        "only {} anonymous clients were served",
        held.len()
    );
    // They have been idle for more than a second: a host gets a slot and an answer.
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = Instant::now();
    let r = k.as_host("hostA", "POST", "/v1/volumes", &json!({ "uuid": VOL }));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    drop(held);
}
