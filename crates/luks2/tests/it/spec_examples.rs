//! The worked examples of `format-spec.md` §8 hold for our implementation: the test reads them
//! from the document itself, so the document cannot drift from the code.

use std::collections::HashMap;

use nbdcrypt_luks2::crypto::{af_merge, compute_digest, HashAlg, SectorCipher};

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `00..3f` → 0x00..=0x3f; `11*32` → 32 bytes of 0x11; `zeros(n)`; else hex.
fn bytes(s: &str) -> Vec<u8> {
    if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (
            u8::from_str_radix(a, 16).unwrap(),
            u8::from_str_radix(b, 16).unwrap(),
        );
        return (a..=b).collect();
    }
    if let Some((v, n)) = s.split_once('*') {
        return vec![u8::from_str_radix(v, 16).unwrap(); n.parse().unwrap()];
    }
    if let Some(n) = s.strip_prefix("zeros(").and_then(|r| r.strip_suffix(')')) {
        return vec![0; n.parse().unwrap()];
    }
    hex(s)
}

fn examples(kind: &str) -> Vec<HashMap<String, String>> {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../format-spec.md"))
            .expect("format-spec.md");
    let prefix = format!("example {kind}: ");
    let found: Vec<_> = spec
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let mut m = HashMap::new();
            // `material=` runs to ` key=`; everything else is space-separated key=value.
            let main = match rest.split_once(" material=") {
                Some((a, b)) => {
                    let (mat, tail) = b.rsplit_once(" key=").unwrap();
                    m.insert("material".to_string(), mat.to_string());
                    m.insert("key".to_string(), tail.to_string());
                    a
                }
                None => rest,
            };
            for kv in main.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                m.insert(k.to_string(), v.to_string());
            }
            m
        })
        .collect();
    assert!(!found.is_empty(), "no `{prefix}` lines in format-spec.md");
    found
}

#[test]
fn xts_examples() {
    let ex = examples("xts");
    assert_eq!(ex.len(), 3);
    for e in ex {
        let cipher = SectorCipher::new(&bytes(&e["key"])).unwrap();
        let ss: usize = e["sector_size"].parse().unwrap();
        let offset: u64 = e["offset"].parse().unwrap();
        let tweak: u64 = e["tweak"].parse().unwrap();
        assert_eq!(offset / 512, tweak, "tweak is the 512-byte sector number");
        let mut buf = bytes(&e["plaintext"]);
        assert_eq!(buf.len(), ss);
        let plain = buf.clone();
        cipher.encrypt(&mut buf, ss, offset / 512);
        for (k, v) in &e {
            if let Some(range) = k.strip_prefix("ct[").and_then(|r| r.strip_suffix(']')) {
                let (a, b) = range.split_once("..").unwrap();
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                assert_eq!(buf[a..b], hex(v)[..], "{k} of {e:?}");
            }
        }
        cipher.decrypt(&mut buf, ss, offset / 512);
        assert_eq!(buf, plain);
    }
}

#[test]
fn digest_example() {
    for e in examples("digest") {
        let d = compute_digest(
            HashAlg::Sha256,
            e["iterations"].parse().unwrap(),
            &bytes(&e["salt"]),
            &bytes(&e["key"]),
            32,
        )
        .unwrap();
        assert_eq!(d, hex(&e["digest"]));
    }
}

#[test]
fn af_merge_example() {
    for e in examples("af-merge") {
        assert_eq!(e["material"], "(7*i+1)&0xff for i in 0..96");
        let material: Vec<u8> = (0..96u32).map(|i| ((7 * i + 1) & 0xff) as u8).collect();
        let key = af_merge(
            &material,
            e["key_size"].parse().unwrap(),
            e["stripes"].parse().unwrap(),
            HashAlg::from_name(&e["hash"]).unwrap(),
        )
        .unwrap();
        assert_eq!(key.expose(), &hex(&e["key"])[..]);
    }
}
