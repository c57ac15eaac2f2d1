//! `nbdcrypt dump`: the header in the layout of `cryptsetup luksDump` (cryptsetup 2.6,
//! `lib/luks2/luks2_json_metadata.c`), or the JSON metadata with `--json`.

use std::fmt::Write;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::format::metadata::{Metadata, SegmentSize};
use crate::format::Printable as P;
use crate::volume::{self, Access, LoadedHeader, VolumeError};

use super::args::{HeaderArg, CRYPTSETUP_DISCARD_WARNING};
use super::error::CliError;
use super::unlock::{open_loaded, warn_all};

/// `nbdcrypt dump`.
#[derive(clap::Args)]
pub struct DumpArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    /// Print a JSON document instead: the same fields with stable names, and the LUKS2
    /// metadata verbatim under "metadata" (docs/json.md).
    #[arg(long, conflicts_with = "dump_json_metadata")]
    json: bool,
    /// Print only the LUKS2 JSON metadata, as `cryptsetup luksDump --dump-json-metadata`.
    #[arg(long)]
    dump_json_metadata: bool,
}

impl DumpArgs {
    /// Runs `dump`: the text, `--json` or `--dump-json-metadata` on stdout; the discard
    /// warnings on stderr.
    pub fn run(self) -> Result<(), CliError> {
        let image = self.image;
        let header = self.header.header.as_deref();
        // A detached header file given as IMAGE is dumped on its own, as `cryptsetup
        // luksDump HEADER` does: without its data file the volume size is unknown (null).
        let (o, lh, data_known) = match open_loaded(&image, header, Access::Inspect) {
            Err(CliError::Volume(VolumeError::DetachedHeader { .. })) if header.is_none() => {
                let o = volume::OpenedImage::open(&image, None, Access::Inspect)?;
                let lh = volume::load_detached_header(&o.header, &image, 0)?;
                warn_all(&lh.warnings);
                (o, lh, false)
            }
            r => {
                let (o, lh) = r?;
                (o, lh, true)
            }
        };
        if self.json || self.dump_json_metadata {
            let text = if self.json {
                let mut doc = json(&lh, &image, header);
                if !data_known {
                    doc["segments"][0]["size"] = serde_json::Value::Null;
                }
                serde_json::to_string_pretty(&doc)
            } else {
                serde_json::to_string_pretty(&lh.metadata)
            }
            .map_err(|e| CliError::Usage(e.to_string()))?;
            println!("{text}");
        } else {
            print!("{}", render(&lh));
        }
        if !data_known {
            eprintln!(
                "note: {} is a detached header; give its data file as IMAGE with --header for the volume's size and holes",
                image.display()
            );
            return Ok(());
        }
        // On stderr, so stdout stays luksDump's text line for line.
        for w in discard_warnings(&o.data, &image, &lh)? {
            eprintln!("warning: {w}");
        }
        Ok(())
    }
}

fn hex_block(out: &mut String, bytes: &[u8], indent: &str) {
    for (i, chunk) in bytes.chunks(16).enumerate() {
        if i > 0 {
            out.push_str(indent);
        }
        for b in chunk {
            let _ = write!(out, "{b:02x} ");
        }
        out.push('\n');
    }
}

/// `s` escaped for the terminal, or `(no WHAT)` when empty.
fn or_none(s: &str, what: &str) -> String {
    if s.is_empty() {
        format!("(no {what})")
    } else {
        P(s).to_string()
    }
}

/// Render the luksDump-style text of a loaded header. Every string of the header is
/// escaped for the terminal ([`crate::format::escape_for_terminal`]): a header is attacker
/// controlled, and a newline or an escape sequence in it must not forge output.
pub fn render(lh: &LoadedHeader) -> String {
    let h = &lh.header;
    let md: &Metadata = &lh.metadata;
    let mut o = String::new();
    let _ = writeln!(o, "LUKS header information");
    let _ = writeln!(o, "Version:       \t2");
    let _ = writeln!(o, "Epoch:         \t{}", h.seqid);
    let _ = writeln!(o, "Metadata area: \t{} [bytes]", h.hdr_size);
    let _ = writeln!(o, "Keyslots area: \t{} [bytes]", md.config.keyslots_size);
    let _ = writeln!(o, "UUID:          \t{}", P(&h.uuid));
    let _ = writeln!(o, "Label:         \t{}", or_none(&h.label, "label"));
    let _ = writeln!(o, "Subsystem:     \t{}", or_none(&h.subsystem, "subsystem"));
    let flags = md.config.flags.as_ref().filter(|f| !f.is_empty());
    let _ = writeln!(
        o,
        "Flags:       \t{}",
        // luksDump prints each flag followed by a space.
        flags.map_or("(no flags)".to_string(), |f| f
            .iter()
            .map(|x| format!("{} ", P(x)))
            .collect::<String>())
    );
    let _ = writeln!(o, "\nData segments:");
    for (id, s) in &md.segments {
        let _ = writeln!(o, "  {id}: {}", P(&s.kind));
        let _ = writeln!(o, "\toffset: {} [bytes]", s.offset);
        match s.size {
            SegmentSize::Dynamic => {
                let _ = writeln!(o, "\tlength: (whole device)");
            }
            SegmentSize::Bytes(n) => {
                let _ = writeln!(o, "\tlength: {n} [bytes]");
            }
        }
        let _ = writeln!(o, "\tcipher: {}", P(&s.encryption));
        let _ = writeln!(o, "\tsector: {} [bytes]", s.sector_size);
    }
    let _ = writeln!(o, "\nKeyslots:");
    for (id, k) in &md.keyslots {
        let _ = writeln!(o, "  {id}: {}", P(&k.kind));
        let _ = writeln!(o, "\tKey:        {} bits", u64::from(k.key_size) * 8);
        let prio = match k.priority.unwrap_or(1) {
            0 => "ignored",
            2 => "preferred",
            _ => "normal",
        };
        let _ = writeln!(o, "\tPriority:   {prio}");
        if let Some(enc) = &k.area.encryption {
            let _ = writeln!(o, "\tCipher:     {}", P(enc));
        }
        if let Some(ks) = k.area.key_size {
            let _ = writeln!(o, "\tCipher key: {} bits", u64::from(ks) * 8);
        }
        if let Some(kdf) = &k.kdf {
            let _ = writeln!(o, "\tPBKDF:      {}", P(&kdf.kind));
            if kdf.kind == "pbkdf2" {
                let _ = writeln!(o, "\tHash:       {}", P(kdf.hash.as_deref().unwrap_or("?")));
                let _ = writeln!(o, "\tIterations: {}", kdf.iterations.unwrap_or(0));
            } else {
                let _ = writeln!(o, "\tTime cost:  {}", kdf.time.unwrap_or(0));
                let _ = writeln!(o, "\tMemory:     {}", kdf.memory.unwrap_or(0));
                let _ = writeln!(o, "\tThreads:    {}", kdf.cpus.unwrap_or(0));
            }
            o.push_str("\tSalt:       ");
            hex_block(&mut o, &kdf.salt, "\t            ");
        }
        if let Some(af) = &k.af {
            let _ = writeln!(o, "\tAF stripes: {}", af.stripes);
            let _ = writeln!(o, "\tAF hash:    {}", P(&af.hash));
        }
        let _ = writeln!(o, "\tArea offset:{} [bytes]", k.area.offset);
        let _ = writeln!(o, "\tArea length:{} [bytes]", k.area.size);
        let ids = id.to_string();
        if let Some((did, _)) = md.digests.iter().find(|(_, d)| d.keyslots.contains(&ids)) {
            let _ = writeln!(o, "\tDigest ID:  {did}");
        }
    }
    let _ = writeln!(o, "Tokens:");
    for (id, t) in &md.tokens {
        let kind = t.get("type").and_then(|v| v.as_str()).unwrap_or("?");
        let _ = writeln!(o, "  {id}: {}", P(kind));
        if let Some(id) = t.get("recovery_id").and_then(|v| v.as_str()) {
            let _ = writeln!(o, "\tRecovery ID: {}", P(id));
        }
        if let Some(desc) = t.get("key_description").and_then(|v| v.as_str()) {
            let _ = writeln!(o, "\tKey description: {}", P(desc));
        }
        for ks in t
            .get("keyslots")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let _ = writeln!(o, "\tKeyslot:    {}", P(ks.as_str().unwrap_or("?")));
        }
    }
    let _ = writeln!(o, "Digests:");
    for (id, d) in &md.digests {
        let _ = writeln!(o, "  {id}: {}", P(&d.kind));
        let _ = writeln!(o, "\tHash:       {}", P(&d.hash));
        let _ = writeln!(o, "\tIterations: {}", d.iterations);
        o.push_str("\tSalt:       ");
        hex_block(&mut o, &d.salt, "\t            ");
        o.push_str("\tDigest:     ");
        hex_block(&mut o, &d.digest, "\t            ");
    }
    o
}

/// What `dump` says on stderr when the image shows, or will show, which parts of the volume
/// are unused: the data segment has holes in the image file (never written — every fresh
/// sparse volume — or discarded with `open --discard passdown`): one line saying what that
/// means and its remedy (`nbdcrypt wipe`); and the header's persistent `allow-discards` flag
/// (cryptsetup `--persistent --allow-discards`), with cryptsetup's discard warning, which is
/// quoted only then (discards were enabled). Empty when neither applies.
///
/// Errors: [`VolumeError::Io`] when the holes cannot be looked up.
pub fn discard_warnings(
    file: &File,
    image: &Path,
    lh: &LoadedHeader,
) -> Result<Vec<String>, VolumeError> {
    let mut w = Vec::new();
    let holes = volume::segment_hole_bytes(file, image, lh)?;
    if holes > 0 {
        let shown = crate::format::escape_for_terminal(&image.display().to_string()).into_owned();
        w.push(format!(
            "{holes} of the {} bytes of the data segment are holes in the image file (never \
             written, or discarded), so a reader of the file sees which parts of the volume \
             are unused; `nbdcrypt wipe {shown}` fills them (and open without --discard \
             passdown keeps them filled)",
            lh.segment.size
        ));
    }
    if lh.allow_discards() {
        w.push(format!(
            "the header has the persistent flag allow-discards: cryptsetup opens this volume \
             with discards passed down (nbdcrypt only with open --discard passdown); \
             cryptsetup on discards: \"{CRYPTSETUP_DISCARD_WARNING}\""
        ));
    }
    Ok(w)
}

/// Version of the `dump --json` document ([`json`]); raised only when a field changes meaning
/// or disappears (new fields may be added within a version). Documented in `docs/json.md`.
pub const JSON_SCHEMA: &str = "nbdcrypt-dump/1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keyslot or segment ids named in a JSON string list (`["0", "1"]`) as numbers.
fn ids(list: &[String]) -> Vec<u64> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

/// The `dump --json` document of a loaded header (`docs/json.md`): the fields of the
/// luksDump-style text with stable names, numbers in bytes (or bits where the name says),
/// binary values in lowercase hex, plus the LUKS2 JSON metadata verbatim under `metadata`.
/// `image` and `header` are the paths given (`header` is null without `--header`).
pub fn json(lh: &LoadedHeader, image: &Path, header: Option<&Path>) -> serde_json::Value {
    use serde_json::{json, Value};
    let h = &lh.header;
    let md: &Metadata = &lh.metadata;
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let segments: Vec<Value> = md
        .segments
        .iter()
        .map(|(id, s)| {
            json!({
                "id": id.0,
                "type": s.kind,
                "offset": s.offset,
                "length": match s.size { SegmentSize::Dynamic => None, SegmentSize::Bytes(n) => Some(n) },
                "size": if s.offset == lh.segment.offset { Some(lh.segment.size) } else { None },
                "cipher": s.encryption,
                "sector_size": s.sector_size,
            })
        })
        .collect();
    let keyslots: Vec<Value> = md
        .keyslots
        .iter()
        .map(|(id, k)| {
            let ids = id.to_string();
            let digest = md
                .digests
                .iter()
                .find(|(_, d)| d.keyslots.contains(&ids))
                .map(|(d, _)| d.0);
            let kdf = k.kdf.as_ref();
            json!({
                "id": id.0,
                "type": k.kind,
                "key_bits": u64::from(k.key_size) * 8,
                "priority": match k.priority.unwrap_or(1) { 0 => "ignored", 2 => "preferred", _ => "normal" },
                "cipher": k.area.encryption,
                "cipher_key_bits": k.area.key_size.map(|b| u64::from(b) * 8),
                "pbkdf": kdf.map(|f| f.kind.clone()),
                "hash": kdf.and_then(|f| f.hash.clone()),
                "iterations": kdf.and_then(|f| f.iterations),
                "time_cost": kdf.and_then(|f| f.time),
                "memory_kib": kdf.and_then(|f| f.memory),
                "threads": kdf.and_then(|f| f.cpus),
                "salt": kdf.map(|f| hex(&f.salt)),
                "af_stripes": k.af.as_ref().map(|a| a.stripes),
                "af_hash": k.af.as_ref().map(|a| a.hash.clone()),
                "area_offset": k.area.offset,
                "area_length": k.area.size,
                "digest_id": digest,
            })
        })
        .collect();
    let tokens: Vec<Value> = md
        .tokens
        .iter()
        .map(|(id, t)| {
            let ks: Vec<String> = t
                .get("keyslots")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            json!({
                "id": id.0,
                "type": t.get("type").and_then(|v| v.as_str()),
                "keyslots": self::ids(&ks),
                "token": t,
            })
        })
        .collect();
    let digests: Vec<Value> = md
        .digests
        .iter()
        .map(|(id, d)| {
            json!({
                "id": id.0,
                "type": d.kind,
                "hash": d.hash,
                "iterations": d.iterations,
                "salt": hex(&d.salt),
                "digest": hex(&d.digest),
                "keyslots": ids(&d.keyslots),
                "segments": ids(&d.segments),
            })
        })
        .collect();
    json!({
        "schema": JSON_SCHEMA,
        "image": image.display().to_string(),
        "header": header.map(|p| p.display().to_string()),
        "version": 2,
        "epoch": h.seqid,
        "metadata_area": h.hdr_size,
        "keyslots_area": md.config.keyslots_size,
        "uuid": h.uuid,
        "label": opt(&h.label),
        "subsystem": opt(&h.subsystem),
        "flags": md.config.flags.clone().unwrap_or_default(),
        "segments": segments,
        "keyslots": keyslots,
        "tokens": tokens,
        "digests": digests,
        "warnings": lh.warnings,
        "metadata": md,
    })
}
