//! The squashfs 4.0 superblock, the one parser of it: [`read`] decodes the
//! 96 bytes at the start of an image into fields; [`Superblock::check`] is
//! the full sanity check `shoal import` and the converter apply to a file
//! before it enters a store. Readers with rules of their own (the
//! launcher's pre-mount check, the built-in image server) take the fields
//! from [`read`] and judge them themselves. Pure logic, no I/O.

/// Size of the superblock at the start of every squashfs image.
pub const SIZE: usize = 96;
/// `hsqs`, little-endian.
pub const MAGIC: u32 = 0x7371_7368;
/// A table offset meaning "no such table".
pub const ABSENT: u64 = u64::MAX;

/// Every field of a squashfs 4.0 superblock, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inodes: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragments: u32,
    pub compressor: u16,
    pub block_log: u16,
    pub flags: u16,
    pub id_count: u16,
    pub major: u16,
    pub minor: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub xattr_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
    pub export_table: u64,
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

/// Why the bytes are not a squashfs superblock at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSquashfs {
    /// Fewer than [`SIZE`] bytes.
    Short(usize),
    /// The first four bytes are not `hsqs`.
    NoMagic,
}

impl std::fmt::Display for NotSquashfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSquashfs::Short(n) => write!(f, "{n} bytes, shorter than a squashfs superblock"),
            NotSquashfs::NoMagic => f.write_str("no squashfs magic (\"hsqs\") at the start"),
        }
    }
}

/// Decodes the superblock at the start of `b`: only its length and magic
/// are checked here.
pub fn read(b: &[u8]) -> Result<Superblock, NotSquashfs> {
    if b.len() < SIZE {
        return Err(NotSquashfs::Short(b.len()));
    }
    if u32_at(b, 0) != MAGIC {
        return Err(NotSquashfs::NoMagic);
    }
    Ok(Superblock {
        inodes: u32_at(b, 4),
        mkfs_time: u32_at(b, 8),
        block_size: u32_at(b, 12),
        fragments: u32_at(b, 16),
        compressor: u16_at(b, 20),
        block_log: u16_at(b, 22),
        flags: u16_at(b, 24),
        id_count: u16_at(b, 26),
        major: u16_at(b, 28),
        minor: u16_at(b, 30),
        root_inode: u64_at(b, 32),
        bytes_used: u64_at(b, 40),
        id_table: u64_at(b, 48),
        xattr_table: u64_at(b, 56),
        inode_table: u64_at(b, 64),
        directory_table: u64_at(b, 72),
        fragment_table: u64_at(b, 80),
        export_table: u64_at(b, 88),
    })
}

/// Reads and checks a superblock against the file's length. The error is
/// a short reason for the caller to put after the file name.
pub fn parse(b: &[u8], file_len: u64) -> Result<Superblock, String> {
    let sb = read(b).map_err(|e| e.to_string())?;
    sb.check(file_len)?;
    Ok(sb)
}

impl Superblock {
    /// The sanity check for a file entering a store: version 4.0, a block
    /// size squashfs can have, a known compressor, every table inside the
    /// image, and an image no longer than the file.
    pub fn check(&self, file_len: u64) -> Result<(), String> {
        let (major, minor) = (self.major, self.minor);
        if (major, minor) != (4, 0) {
            return Err(format!(
                "squashfs version {major}.{minor}, only 4.0 is supported"
            ));
        }
        let (block_size, block_log) = (self.block_size, self.block_log);
        if !(4096..=1 << 20).contains(&block_size)
            || !block_size.is_power_of_two()
            || 1u32.checked_shl(block_log.into()) != Some(block_size)
        {
            return Err(format!("bad block size {block_size} (log {block_log})"));
        }
        let compressor = self.compressor;
        if !(1..=6).contains(&compressor) {
            return Err(format!("unknown compressor id {compressor}"));
        }
        let bytes_used = self.bytes_used;
        if bytes_used > file_len || bytes_used < SIZE as u64 {
            return Err(format!(
                "superblock says {bytes_used} bytes, the file has {file_len} (truncated?)"
            ));
        }
        for (name, at, optional) in [
            ("id table", self.id_table, false),
            ("xattr table", self.xattr_table, true),
            ("inode table", self.inode_table, false),
            ("directory table", self.directory_table, false),
            ("fragment table", self.fragment_table, true),
            ("export table", self.export_table, true),
        ] {
            if optional && at == ABSENT {
                continue;
            }
            if at < SIZE as u64 || at >= bytes_used {
                return Err(format!(
                    "{name} at {at} lies outside the image ({bytes_used} bytes)"
                ));
            }
        }
        if self.inodes == 0 {
            return Err("no inodes".into());
        }
        Ok(())
    }
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
