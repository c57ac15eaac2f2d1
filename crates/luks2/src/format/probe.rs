//! What else an image may already hold: file-system, partition-table, swap, LVM and other
//! volume signatures at the start of a file, so `format` can warn before it destroys them (as
//! cryptsetup does through libblkid: "Device already contains a 'ext4' superblock signature")
//! and "not a valid LUKS device" need not suggest `format` for a file full of data.
//!
//! A pure function over the image's first bytes ([`PROBE_BYTES`] are enough for every
//! signature here); no I/O. The magic numbers and their offsets are the ones libblkid reads
//! (util-linux `libblkid/src/superblocks/*.c` and `partitions/*.c`, each format's own
//! specification). Only the magic is checked: a match says "this looks like X", which is what a
//! warning needs, not that X is intact.

/// How many bytes from the start of the image [`probe`] looks at (the btrfs superblock at
/// 64 KiB is the farthest signature).
pub const PROBE_BYTES: usize = (64 << 10) + 4096;

/// A recognised signature: what a user would call the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// A LUKS1 header (`LUKS\xba\xbe`, version 1).
    Luks1,
    /// A LUKS2 header (`LUKS\xba\xbe` or `SKUL\xba\xbe`, version 2).
    Luks2,
    /// An ext2, ext3 or ext4 file system (superblock magic 0xEF53 at byte 1080); the name
    /// follows its feature flags as blkid's does.
    Ext(&'static str),
    /// XFS (`XFSB` at 0).
    Xfs,
    /// Btrfs (`_BHRfS_M` at 65600).
    Btrfs,
    /// FAT (`FAT12   `/`FAT16   ` at 54, `FAT32   ` at 82, with the 0x55AA boot signature).
    Vfat,
    /// NTFS (`NTFS    ` at 3).
    Ntfs,
    /// exFAT (`EXFAT   ` at 3).
    Exfat,
    /// BitLocker (`-FVE-FS-` at 3).
    BitLocker,
    /// Linux swap (`SWAPSPACE2` or `SWAP-SPACE` ending a 4, 8, 16 or 64 KiB page).
    Swap,
    /// An LVM2 physical volume (`LABELONE` in one of the first four 512-byte sectors, `LVM2 001`
    /// 24 bytes after it).
    Lvm2,
    /// A GPT partition table (`EFI PART` at 512, or at 4096 for 4 KiB sectors).
    Gpt,
    /// A DOS/MBR partition table (0x55AA at 510 and at least one partition entry in use).
    Dos,
    /// An ISO 9660 image (`CD001` at 32769).
    Iso9660,
    /// A SquashFS image (`hsqs` at 0).
    Squashfs,
    /// A qcow2 disk image (`QFI\xfb` at 0): not a raw image at all.
    Qcow2,
}

impl Signature {
    /// The name a user knows it by, as blkid's `TYPE` (`ext4`, `swap`, `dos`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Signature::Luks1 => "LUKS1",
            Signature::Luks2 => "LUKS2",
            Signature::Ext(n) => n,
            Signature::Xfs => "xfs",
            Signature::Btrfs => "btrfs",
            Signature::Vfat => "vfat",
            Signature::Ntfs => "ntfs",
            Signature::Exfat => "exfat",
            Signature::BitLocker => "BitLocker",
            Signature::Swap => "swap",
            Signature::Lvm2 => "LVM2_member",
            Signature::Gpt => "gpt",
            Signature::Dos => "dos",
            Signature::Iso9660 => "iso9660",
            Signature::Squashfs => "squashfs",
            Signature::Qcow2 => "qcow2",
        }
    }

    /// What it is, for a sentence: "an ext4 file system", "a gpt partition table", ...
    pub fn describe(self) -> String {
        match self {
            Signature::Luks1 | Signature::Luks2 => format!("a {} header", self.name()),
            Signature::Gpt | Signature::Dos => {
                format!("a {} partition table", self.name())
            }
            Signature::Swap => "a swap area".into(),
            Signature::Lvm2 => "an LVM2 physical volume".into(),
            Signature::BitLocker => "a BitLocker volume".into(),
            Signature::Iso9660 | Signature::Squashfs => format!("an {} image", self.name()),
            Signature::Qcow2 => "a qcow2 disk image (not a raw image)".into(),
            // The article as the name is spoken: "an ext4", "an xfs", "an ntfs", "a vfat".
            Signature::Ext(_) | Signature::Xfs | Signature::Ntfs | Signature::Exfat => {
                format!("an {} file system", self.name())
            }
            _ => format!("a {} file system", self.name()),
        }
    }
}

fn at(b: &[u8], off: usize, magic: &[u8]) -> bool {
    b.get(off..off + magic.len()) == Some(magic)
}

fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

/// The ext flavour from the superblock's feature flags (blkid's rules, simplified): ext4 with
/// any ext4-only incompatible or read-only feature, ext3 with a journal, else ext2.
fn ext_flavour(b: &[u8]) -> &'static str {
    const SB: usize = 1024;
    let compat = le32(b, SB + 0x5C);
    let incompat = le32(b, SB + 0x60);
    let ro_compat = le32(b, SB + 0x64);
    // incompat: extents 0x40, 64bit 0x80, flex_bg 0x200, ...; ro_compat: huge_file 0x8,
    // gdt_csum 0x10, dir_nlink 0x20, extra_isize 0x40, metadata_csum 0x400.
    if incompat & !0x0006 != 0 || ro_compat & !0x0007 != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

/// The signature found at the start of an image, if any; `head` is its first bytes (up to
/// [`PROBE_BYTES`]; a shorter slice only misses signatures beyond it). LUKS is reported first,
/// then file systems, then partition tables (a FAT boot sector also carries 0x55AA).
pub fn probe(head: &[u8]) -> Option<Signature> {
    if at(head, 0, b"LUKS\xba\xbe") || at(head, 0, b"SKUL\xba\xbe") {
        return Some(match head.get(6..8) {
            Some([0, 1]) => Signature::Luks1,
            _ => Signature::Luks2,
        });
    }
    if at(head, 0, b"QFI\xfb") {
        return Some(Signature::Qcow2);
    }
    if at(head, 0, b"XFSB") {
        return Some(Signature::Xfs);
    }
    if at(head, 0, b"hsqs") {
        return Some(Signature::Squashfs);
    }
    if at(head, 3, b"-FVE-FS-") {
        return Some(Signature::BitLocker);
    }
    if at(head, 3, b"NTFS    ") {
        return Some(Signature::Ntfs);
    }
    if at(head, 3, b"EXFAT   ") {
        return Some(Signature::Exfat);
    }
    if at(head, 1080, &[0x53, 0xEF]) {
        return Some(Signature::Ext(ext_flavour(head)));
    }
    if at(head, 65600, b"_BHRfS_M") {
        return Some(Signature::Btrfs);
    }
    if at(head, 32769, b"CD001") {
        return Some(Signature::Iso9660);
    }
    for page in [4096usize, 8192, 16384, 65536] {
        if at(head, page - 10, b"SWAPSPACE2") || at(head, page - 10, b"SWAP-SPACE") {
            return Some(Signature::Swap);
        }
    }
    for sector in 0..4 {
        let off = sector * 512;
        if at(head, off, b"LABELONE") && at(head, off + 24, b"LVM2 001") {
            return Some(Signature::Lvm2);
        }
    }
    let boot_sig = at(head, 510, &[0x55, 0xAA]);
    let fat = at(head, 54, b"FAT12   ") || at(head, 54, b"FAT16   ") || at(head, 82, b"FAT32   ");
    if boot_sig && fat {
        return Some(Signature::Vfat);
    }
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    if boot_sig {
        // Four 16-byte entries from 446: status 0x00 or 0x80, and a type byte in use.
        let entries = (0..4).map(|i| &head[446 + 16 * i..462 + 16 * i]);
        let mut used = 0;
        for e in entries {
            if e[0] != 0 && e[0] != 0x80 {
                return None;
            }
            used += usize::from(e[4] != 0);
        }
        if used > 0 {
            return Some(Signature::Dos);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(b: &mut [u8], off: usize, m: &[u8]) {
        b[off..off + m.len()].copy_from_slice(m);
    }

    fn img() -> Vec<u8> {
        vec![0u8; PROBE_BYTES]
    }

    #[test]
    fn every_signature_is_found_at_its_offset() {
        type Make = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Signature, Make)> = vec![
            (
                Signature::Luks2,
                Box::new(|b| set(b, 0, b"LUKS\xba\xbe\x00\x02")),
            ),
            (
                Signature::Luks1,
                Box::new(|b| set(b, 0, b"LUKS\xba\xbe\x00\x01")),
            ),
            (
                Signature::Qcow2,
                Box::new(|b| set(b, 0, b"QFI\xfb\0\0\0\x03")),
            ),
            (Signature::Xfs, Box::new(|b| set(b, 0, b"XFSB"))),
            (Signature::Squashfs, Box::new(|b| set(b, 0, b"hsqs"))),
            (Signature::BitLocker, Box::new(|b| set(b, 3, b"-FVE-FS-"))),
            (Signature::Ntfs, Box::new(|b| set(b, 3, b"NTFS    "))),
            (Signature::Exfat, Box::new(|b| set(b, 3, b"EXFAT   "))),
            (
                Signature::Ext("ext2"),
                Box::new(|b| set(b, 1080, &[0x53, 0xEF])),
            ),
            (
                Signature::Ext("ext3"),
                Box::new(|b| {
                    set(b, 1080, &[0x53, 0xEF]);
                    set(b, 1024 + 0x5C, &4u32.to_le_bytes());
                }),
            ),
            (
                Signature::Ext("ext4"),
                Box::new(|b| {
                    set(b, 1080, &[0x53, 0xEF]);
                    set(b, 1024 + 0x5C, &4u32.to_le_bytes());
                    set(b, 1024 + 0x60, &0x2C2u32.to_le_bytes());
                }),
            ),
            (Signature::Btrfs, Box::new(|b| set(b, 65600, b"_BHRfS_M"))),
            (Signature::Iso9660, Box::new(|b| set(b, 32769, b"CD001"))),
            (Signature::Swap, Box::new(|b| set(b, 4086, b"SWAPSPACE2"))),
            (Signature::Swap, Box::new(|b| set(b, 65526, b"SWAP-SPACE"))),
            (
                Signature::Lvm2,
                Box::new(|b| {
                    set(b, 512, b"LABELONE");
                    set(b, 536, b"LVM2 001");
                }),
            ),
            (
                Signature::Vfat,
                Box::new(|b| {
                    set(b, 82, b"FAT32   ");
                    set(b, 510, &[0x55, 0xAA]);
                }),
            ),
            (Signature::Gpt, Box::new(|b| set(b, 512, b"EFI PART"))),
            (
                Signature::Dos,
                Box::new(|b| {
                    set(b, 446 + 16 + 4, &[0x83]);
                    set(b, 510, &[0x55, 0xAA]);
                }),
            ),
        ];
        for (want, make) in cases {
            let mut b = img();
            make(&mut b);
            assert_eq!(probe(&b), Some(want), "{}", want.name());
        }
    }

    #[test]
    fn nothing_is_found_in_zeros_noise_or_a_bare_boot_signature() {
        assert_eq!(probe(&img()), None);
        assert_eq!(probe(&[]), None, "a short or empty file is no signature");
        let mut b = img();
        b[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(probe(&b), None, "0x55AA with no partition in use");
        b[446] = 0x17; // an invalid status byte: not a partition table
        b[450] = 0x83;
        assert_eq!(probe(&b), None);
        // Pseudo-random bytes (what an encrypted or wiped image holds).
        let mut x: u32 = 0x1234_5678;
        let noise: Vec<u8> = (0..PROBE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(probe(&noise), None);
    }

    #[test]
    fn descriptions_read_as_sentences() {
        assert_eq!(Signature::Ext("ext4").describe(), "an ext4 file system");
        assert_eq!(Signature::Gpt.describe(), "a gpt partition table");
        assert_eq!(Signature::Swap.describe(), "a swap area");
        assert_eq!(Signature::Xfs.describe(), "an xfs file system");
        assert_eq!(Signature::Btrfs.describe(), "a btrfs file system");
    }
}
