//! `nbdcrypt benchmark` prints, like `cryptsetup benchmark`, the KDF costs reached and the XTS
//! throughput per sector size. Only the shape of the output is checked: speeds are figures.

use crate::common;

#[test]
fn benchmark_prints_every_row() {
    let out = common::ok(common::nbdcrypt().args([
        "benchmark",
        "--iter-time",
        "50",
        "--pbkdf-memory",
        "8192",
        "--pbkdf-parallel",
        "1",
    ]));
    let pbkdf2: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("PBKDF2-sha256"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no PBKDF2 row:\n{out}"));
    assert!(pbkdf2 >= 1000, "{out}");
    for kdf in ["argon2i ", "argon2id "] {
        let row = out
            .lines()
            .find(|l| l.starts_with(kdf))
            .unwrap_or_else(|| panic!("no {kdf} row:\n{out}"));
        let time: u32 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(time >= 4, "{row}");
    }
    for sector in ["512b", "4096b"] {
        let row = out
            .lines()
            .find(|l| l.contains("aes-xts") && l.contains(&format!(" {sector} |")))
            .unwrap_or_else(|| panic!("no aes-xts {sector} row:\n{out}"));
        let speeds: Vec<f64> = row
            .split('|')
            .filter_map(|c| c.trim().strip_suffix(" MiB/s"))
            .map(|n| n.trim().parse().unwrap())
            .collect();
        assert_eq!(speeds.len(), 2, "{row}");
        assert!(speeds.iter().all(|s| *s > 0.0), "{row}");
    }
}
