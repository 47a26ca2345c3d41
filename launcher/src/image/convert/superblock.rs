//! The squashfs 4.0 superblock: read and sanity-check it (pure logic over 96 bytes).

/// Size of the superblock at the start of every squashfs image.
pub const SIZE: usize = 96;
const MAGIC: u32 = 0x7371_7368; // "hsqs" little-endian
const ABSENT: u64 = u64::MAX;

/// The fields of a squashfs superblock that `check_squashfs` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inodes: u32,
    pub block_size: u32,
    pub compressor: u16,
    pub bytes_used: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses and checks a superblock against the file's length. The error is
/// a short reason for the caller to put after the file name.
pub fn parse(b: &[u8], file_len: u64) -> Result<Superblock, String> {
    if b.len() < SIZE {
        return Err(format!(
            "{} bytes, shorter than a squashfs superblock",
            b.len()
        ));
    }
    if u32_at(b, 0) != MAGIC {
        return Err("no squashfs magic (\"hsqs\") at the start".into());
    }
    let (major, minor) = (u16_at(b, 28), u16_at(b, 30));
    if (major, minor) != (4, 0) {
        return Err(format!(
            "squashfs version {major}.{minor}, only 4.0 is supported"
        ));
    }
    let block_size = u32_at(b, 12);
    let block_log = u16_at(b, 22);
    if !(4096..=1 << 20).contains(&block_size)
        || !block_size.is_power_of_two()
        || 1u32.checked_shl(block_log.into()) != Some(block_size)
    {
        return Err(format!("bad block size {block_size} (log {block_log})"));
    }
    let compressor = u16_at(b, 20);
    if !(1..=6).contains(&compressor) {
        return Err(format!("unknown compressor id {compressor}"));
    }
    let bytes_used = u64_at(b, 40);
    if bytes_used > file_len || bytes_used < SIZE as u64 {
        return Err(format!(
            "superblock says {bytes_used} bytes, the file has {file_len} (truncated?)"
        ));
    }
    // id, xattr, inode, directory, fragment, export tables.
    for (name, off, optional) in [
        ("id table", 48, false),
        ("xattr table", 56, true),
        ("inode table", 64, false),
        ("directory table", 72, false),
        ("fragment table", 80, true),
        ("export table", 88, true),
    ] {
        let at = u64_at(b, off);
        if optional && at == ABSENT {
            continue;
        }
        if at < SIZE as u64 || at >= bytes_used {
            return Err(format!(
                "{name} at {at} lies outside the image ({bytes_used} bytes)"
            ));
        }
    }
    let inodes = u32_at(b, 4);
    if inodes == 0 {
        return Err("no inodes".into());
    }
    Ok(Superblock {
        inodes,
        block_size,
        compressor,
        bytes_used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&10u32.to_le_bytes());
        b[12..16].copy_from_slice(&131072u32.to_le_bytes());
        b[20..22].copy_from_slice(&6u16.to_le_bytes());
        b[22..24].copy_from_slice(&17u16.to_le_bytes());
        b[28..30].copy_from_slice(&4u16.to_le_bytes());
        b[40..48].copy_from_slice(&4096u64.to_le_bytes());
        for (i, off) in [48, 64, 72, 80].into_iter().enumerate() {
            b[off..off + 8].copy_from_slice(&(1000 + i as u64).to_le_bytes());
        }
        for off in [56, 88] {
            b[off..off + 8].copy_from_slice(&ABSENT.to_le_bytes());
        }
        b
    }

    #[test]
    fn accepts_a_sane_superblock() {
        let sb = parse(&good(), 8192).unwrap();
        assert_eq!(
            (sb.inodes, sb.block_size, sb.compressor, sb.bytes_used),
            (10, 131072, 6, 4096)
        );
    }

    #[test]
    fn rejects_broken_ones() {
        assert!(parse(&good()[..50], 8192).unwrap_err().contains("shorter"));
        let mut b = good();
        b[0] = b'x';
        assert!(parse(&b, 8192).unwrap_err().contains("magic"));
        let mut b = good();
        b[28] = 3;
        assert!(parse(&b, 8192).unwrap_err().contains("version 3.0"));
        let mut b = good();
        b[22] = 16;
        assert!(parse(&b, 8192).unwrap_err().contains("block size"));
        assert!(parse(&good(), 2000).unwrap_err().contains("truncated"));
        let mut b = good();
        b[64..72].copy_from_slice(&5000u64.to_le_bytes());
        assert!(parse(&b, 8192).unwrap_err().contains("inode table"));
    }
}
