//! The run settings of a saved container (`--container-save`, `shoal run
//! --save`), kept in the squashfs file itself: after the filesystem's last
//! byte (the superblock's `bytes_used`, which the kernel, squashfuse and
//! Shoal's image server never read past), a trailer
//! `JSON | u32 little-endian length | "SHOALCF1"`. The JSON is the OCI
//! config's run settings (`Env`, `Entrypoint`, `Cmd`, `WorkingDir`), so
//! `--image=PATH` and `shoal run PATH` of the file run as the image it was
//! saved from did. The settings travel with the file (copied, pinned and
//! hashed with it), and a file without a trailer is a plain squashfs.
//!
//! Must never: read more than [`MAX`] bytes of a file, or take bytes inside
//! the filesystem for a trailer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::manifest::ImageConfig;
use super::superblock;

/// The trailer's last eight bytes.
pub const MAGIC: &[u8; 8] = b"SHOALCF1";

/// The largest trailer JSON read (configs are a few KiB).
pub const MAX: u64 = 1 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Settings {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    working_dir: Option<String>,
}

/// Appends the trailer for `config` to the squashfs file `file` (written
/// by the caller, not yet published).
pub fn append(file: &mut File, config: &ImageConfig) -> io::Result<()> {
    let settings = Settings {
        env: config.env.clone(),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        working_dir: config.workdir.clone(),
    };
    let json = serde_json::to_vec(&settings).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    let end = file.metadata()?.len();
    file.write_all_at(&json, end)?;
    file.write_all_at(&len.to_le_bytes(), end + json.len() as u64)?;
    file.write_all_at(MAGIC, end + json.len() as u64 + 4)?;
    file.sync_data()
}

/// The run settings in `file`'s trailer, if it has one (read with
/// whoever's credentials opened it).
pub fn read(file: &File) -> Option<ImageConfig> {
    let size = file.metadata().ok()?.len();
    let mut tail = [0u8; 12];
    file.read_exact_at(&mut tail, size.checked_sub(12)?).ok()?;
    if &tail[4..] != MAGIC {
        return None;
    }
    let len = u64::from(u32::from_le_bytes(tail[..4].try_into().ok()?));
    let start = size.checked_sub(12 + len)?;
    let mut sb = [0u8; superblock::SIZE];
    file.read_exact_at(&mut sb, 0).ok()?;
    // Only bytes past the filesystem are a trailer.
    if len > MAX || start < superblock::read(&sb).ok()?.bytes_used {
        return None;
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact_at(&mut json, start).ok()?;
    let s: Settings = serde_json::from_slice(&json).ok()?;
    Some(ImageConfig { env: s.env, entrypoint: s.entrypoint, cmd: s.cmd, workdir: s.working_dir, ..ImageConfig::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_squashfs(path: &std::path::Path, used: u64, size: u64) {
        let mut sb = vec![0u8; size as usize];
        sb[..4].copy_from_slice(b"hsqs");
        sb[28..30].copy_from_slice(&4u16.to_le_bytes());
        sb[40..48].copy_from_slice(&used.to_le_bytes());
        std::fs::write(path, sb).unwrap();
    }

    #[test]
    fn settings_round_trip_past_the_filesystem_only() {
        let dir = std::env::temp_dir().join(format!("shoal-trailer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.sqfs");
        fake_squashfs(&p, 4000, 4096);
        assert!(read(&File::open(&p).unwrap()).is_none(), "a plain squashfs has no trailer");
        let config = ImageConfig {
            env: vec!["A=1".into()],
            entrypoint: vec!["/e".into()],
            cmd: vec!["c".into()],
            workdir: Some("/w".into()),
            ..ImageConfig::default()
        };
        append(&mut File::options().read(true).write(true).open(&p).unwrap(), &config).unwrap();
        assert_eq!(read(&File::open(&p).unwrap()), Some(config.clone()));
        // A "trailer" that would start inside the filesystem is not one.
        fake_squashfs(&p, 4096 + 64, 4096);
        append(&mut File::options().read(true).write(true).open(&p).unwrap(), &config).unwrap();
        assert!(read(&File::open(&p).unwrap()).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
