//! `dump --json` (docs/json.md): parsed, and every field checked against what cryptsetup's
//! `luksDump` prints for the same header — on a cryptsetup-made image with an Argon2id and a
//! PBKDF2 keyslot and a token, and on our detached header.

use crate::common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One entry of a luksDump section (`  0: luks2`): its type and `Name: value` lines (hex
/// continuation lines joined, spaces removed).
#[derive(Debug, Default)]
struct Entry {
    kind: String,
    fields: BTreeMap<String, String>,
}

/// luksDump text → (top-level fields, sections of entries by id).
fn parse_luksdump(
    text: &str,
) -> (
    BTreeMap<String, String>,
    BTreeMap<String, BTreeMap<u64, Entry>>,
) {
    let mut top = BTreeMap::new();
    let mut sections: BTreeMap<String, BTreeMap<u64, Entry>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut entry: Option<u64> = None;
    let mut last_field: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) && line.ends_with(':') {
            section = Some(line.trim_end_matches(':').to_string());
            sections
                .entry(line.trim_end_matches(':').to_string())
                .or_default();
            entry = None;
            continue;
        }
        match (&section, line.strip_prefix("  ")) {
            (None, _) => {
                if let Some((k, v)) = line.split_once(':') {
                    top.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            (Some(s), Some(rest)) if !rest.starts_with(' ') && !line.starts_with('\t') => {
                let (id, kind) = rest.split_once(": ").unwrap();
                let id: u64 = id.parse().unwrap();
                sections.get_mut(s).unwrap().insert(
                    id,
                    Entry {
                        kind: kind.trim().to_string(),
                        ..Entry::default()
                    },
                );
                entry = Some(id);
            }
            (Some(s), _) => {
                let e = sections
                    .get_mut(s)
                    .unwrap()
                    .get_mut(&entry.unwrap())
                    .unwrap();
                let body = line.trim_start_matches('\t');
                match body.split_once(':') {
                    Some((k, v)) if !body.starts_with(' ') => {
                        let v = v.trim().to_string();
                        // Keyslot ids of tokens repeat "Keyslot:".
                        let k = k.trim().to_string();
                        let slot = e.fields.entry(k.clone()).or_default();
                        if !slot.is_empty() {
                            slot.push(',');
                        }
                        slot.push_str(&v);
                        last_field = Some(k);
                    }
                    _ => {
                        let k = last_field.clone().unwrap();
                        e.fields.get_mut(&k).unwrap().push_str(body.trim());
                    }
                }
            }
        }
    }
    (top, sections)
}

fn num(s: &str) -> u64 {
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn nohex(s: &str) -> String {
    s.split_whitespace().collect()
}

/// Check `dump --json` of `args` against `cryptsetup luksDump` of `cs_args`.
fn check(ours_args: &[&std::ffi::OsStr], cs_args: &[&std::ffi::OsStr]) {
    let doc: Value =
        serde_json::from_str(&ok(nbdcrypt().arg("dump").arg("--json").args(ours_args))).unwrap();
    let text = ok(cryptsetup().arg("luksDump").args(cs_args));
    let (top, sec) = parse_luksdump(&text);
    assert_eq!(doc["schema"], "nbdcrypt-dump/1");
    assert_eq!(doc["version"], num(&top["Version"]));
    assert_eq!(doc["epoch"], num(&top["Epoch"]));
    assert_eq!(doc["metadata_area"], num(&top["Metadata area"]));
    assert_eq!(doc["keyslots_area"], num(&top["Keyslots area"]));
    assert_eq!(doc["uuid"], top["UUID"].as_str());
    match top["Label"].as_str() {
        "(no label)" => assert!(doc["label"].is_null()),
        l => assert_eq!(doc["label"], l),
    }
    let segs = &sec["Data segments"];
    assert_eq!(doc["segments"].as_array().unwrap().len(), segs.len());
    for s in doc["segments"].as_array().unwrap() {
        let e = &segs[&s["id"].as_u64().unwrap()];
        assert_eq!(s["type"], e.kind.as_str());
        assert_eq!(s["offset"], num(&e.fields["offset"]));
        assert_eq!(s["cipher"], e.fields["cipher"].as_str());
        assert_eq!(s["sector_size"], num(&e.fields["sector"]));
        if e.fields["length"] == "(whole device)" {
            assert!(s["length"].is_null());
        } else {
            assert_eq!(s["length"], num(&e.fields["length"]));
        }
    }
    let slots = &sec["Keyslots"];
    assert_eq!(doc["keyslots"].as_array().unwrap().len(), slots.len());
    for k in doc["keyslots"].as_array().unwrap() {
        let e = &slots[&k["id"].as_u64().unwrap()];
        let f = &e.fields;
        assert_eq!(k["type"], e.kind.as_str());
        assert_eq!(k["key_bits"], num(&f["Key"]));
        assert_eq!(k["priority"], f["Priority"].as_str());
        assert_eq!(k["cipher"], f["Cipher"].as_str());
        assert_eq!(k["cipher_key_bits"], num(&f["Cipher key"]));
        assert_eq!(k["pbkdf"], f["PBKDF"].as_str());
        if f["PBKDF"] == "pbkdf2" {
            assert_eq!(k["hash"], f["Hash"].as_str());
            assert_eq!(k["iterations"], num(&f["Iterations"]));
        } else {
            assert_eq!(k["time_cost"], num(&f["Time cost"]));
            assert_eq!(k["memory_kib"], num(&f["Memory"]));
            assert_eq!(k["threads"], num(&f["Threads"]));
        }
        assert_eq!(k["salt"], nohex(&f["Salt"]));
        assert_eq!(k["af_stripes"], num(&f["AF stripes"]));
        assert_eq!(k["af_hash"], f["AF hash"].as_str());
        assert_eq!(k["area_offset"], num(&f["Area offset"]));
        assert_eq!(k["area_length"], num(&f["Area length"]));
        assert_eq!(k["digest_id"], num(&f["Digest ID"]));
    }
    let toks = &sec["Tokens"];
    assert_eq!(doc["tokens"].as_array().unwrap().len(), toks.len());
    for t in doc["tokens"].as_array().unwrap() {
        let e = &toks[&t["id"].as_u64().unwrap()];
        assert_eq!(t["type"], e.kind.as_str());
        let ks: Vec<u64> = e
            .fields
            .get("Keyslot")
            .map(|v| v.split(',').map(num).collect())
            .unwrap_or_default();
        assert_eq!(t["keyslots"], serde_json::json!(ks));
    }
    let digs = &sec["Digests"];
    assert_eq!(doc["digests"].as_array().unwrap().len(), digs.len());
    for d in doc["digests"].as_array().unwrap() {
        let e = &digs[&d["id"].as_u64().unwrap()];
        assert_eq!(d["type"], e.kind.as_str());
        assert_eq!(d["hash"], e.fields["Hash"].as_str());
        assert_eq!(d["iterations"], num(&e.fields["Iterations"]));
        assert_eq!(d["salt"], nohex(&e.fields["Salt"]));
        assert_eq!(d["digest"], nohex(&e.fields["Digest"]));
    }
    // The LUKS2 metadata verbatim, as cryptsetup's --dump-json-metadata.
    let meta: Value = serde_json::from_str(&ok(cryptsetup()
        .args(["luksDump", "--dump-json-metadata"])
        .args(cs_args)))
    .unwrap();
    assert_eq!(doc["metadata"], meta);
}

fn os(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}

#[test]
fn dump_json_matches_cryptsetup_luksdump() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("cs.img");
    cryptsetup_format(&img, &key, 24 << 20, 4096, "argon2id");
    let key2 = dir.path().join("key2");
    std::fs::write(&key2, b"second passphrase").unwrap();
    ok(cryptsetup()
        .args(["luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--key-file"])
        .arg(&key)
        .arg(&img)
        .arg(&key2));
    ok(cryptsetup()
        .args([
            "config",
            "--label",
            "data",
            "--priority",
            "prefer",
            "--key-slot",
            "1",
        ])
        .arg(&img));
    let tok = dir.path().join("tok.json");
    std::fs::write(
        &tok,
        r#"{"type":"nbd-escrow","keyslots":["1"],"url":"https://x"}"#,
    )
    .unwrap();
    ok(cryptsetup()
        .args(["token", "import", "--json-file"])
        .arg(&tok)
        .arg(&img));
    check(&[os(&img)], &[os(&img)]);
    let doc: Value =
        serde_json::from_str(&ok(nbdcrypt().args(["dump", "--json"]).arg(&img))).unwrap();
    assert_eq!(doc["label"], "data");
    assert_eq!(doc["segments"][0]["size"], 8u64 << 20);
    assert!(doc["header"].is_null());

    // Our detached header: offset 0, the whole data file is the segment.
    let data = dir.path().join("d.img");
    let hdr = dir.path().join("d.hdr");
    ok(nbdcrypt()
        .arg("format")
        .arg(&data)
        .arg("--header")
        .arg(&hdr)
        .args(["--size", "4M", "--pbkdf", "pbkdf2", "--key-file"])
        .arg(&key)
        .args(cheap_kdf_args("pbkdf2")));
    check(
        &[os(&data), "--header".as_ref(), os(&hdr)],
        &[os(&data), "--header".as_ref(), os(&hdr)],
    );
    let doc: Value = serde_json::from_str(&ok(nbdcrypt()
        .args(["dump", "--json"])
        .arg(&data)
        .arg("--header")
        .arg(&hdr)))
    .unwrap();
    assert_eq!(doc["segments"][0]["offset"], 0);
    assert_eq!(doc["segments"][0]["size"], 4u64 << 20);
    assert_eq!(doc["header"], hdr.display().to_string());
}
