//! The site's settings: one TOML file, `/etc/shoal/shoal.toml` by default.
//!
//! Read by the `shoal` command and by the SPANK plugin in every Slurm context,
//! so a typo must be caught the same way everywhere: unknown keys and wrong
//! types are errors that name the file, the line and the key. The annotated
//! example is `packaging/shoal.toml`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the site config lives unless plugstack.conf (`config=PATH`) or
/// `shoal --config PATH` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/shoal/shoal.toml";

/// Everything a site can set. Every section has defaults, so an empty file
/// (or no file at the default path) is a valid configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image: ImageConfig,
    pub store: StoreConfig,
}

/// How pulled and imported images are written as squashfs files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// `zstd:N` (1-22), `gzip:N` (1-9) or `lz4`. Default `zstd:3`.
    pub compression: crate::image::convert::Compression,
    /// Squashfs block size in bytes, a power of two from 4096 to 1048576.
    pub block_size: u32,
}

impl Default for ImageConfig {
    fn default() -> Self {
        let o = crate::image::convert::SquashOptions::default();
        ImageConfig { compression: o.compression, block_size: o.block_size }
    }
}

impl ImageConfig {
    /// The writer options these settings stand for.
    pub fn squash_options(&self) -> crate::image::convert::SquashOptions {
        crate::image::convert::SquashOptions { compression: self.compression, block_size: self.block_size }
    }
}

/// Where images live.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Per-user store; `~` and `$XDG_DATA_HOME` style defaults apply when
    /// unset (`$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`).
    pub user_dir: Option<PathBuf>,
    /// Site store kept by the admins, read-only to users. Images here may be
    /// kernel-mounted by root because no user can have written them.
    pub site_dir: Option<PathBuf>,
}

/// A config file that could not be used; the message names the file, and
/// for bad content the line and key, so an admin can fix it directly.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read Shoal config {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid Shoal config {path}{at}: {message}")]
    Invalid {
        path: PathBuf,
        at: Location,
        message: String,
    },
}

/// Line and key of a config error, shown as ` line 3 (key `store.user_dir`)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: Option<usize>,
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, " (key `{key}`)")?;
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path`. When `path` is the default and the file does not exist,
    /// the defaults are used: a node needs no config file to work.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            at: e.span().map(|s| locate(text, s.start)).unwrap_or_default(),
            message: e.message().trim().to_string(),
        })
    }
}

/// Finds the line number and dotted key of the byte offset `at` in `text`,
/// so "invalid type: integer, expected a string" can say which key it was.
fn locate(text: &str, at: usize) -> Location {
    let at = at.min(text.len());
    let line_no = text[..at].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let Some(line) = lines.get(line_no - 1) else {
        return Location { line: Some(line_no), key: None };
    };
    let table = lines[..line_no - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = match line.trim() {
        l if l.starts_with('[') => Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_string()),
        l => l.split_once('=').map(|(k, _)| {
            let k = k.trim().trim_matches('"');
            match &table {
                Some(t) => format!("{t}.{k}"),
                None => k.to_string(),
            }
        }),
    };
    Location { line: Some(line_no), key }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/shoal/shoal.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("", Path::new("x")).unwrap(), Config::default());
    }

    #[test]
    fn image_compression_parses_and_bad_values_name_the_key() {
        let c = Config::parse("[image]\ncompression = \"lz4\"\nblock_size = 65536\n", Path::new("x")).unwrap();
        assert_eq!(c.image.squash_options().compression.to_string(), "lz4");
        assert_eq!(c.image.block_size, 65536);
        assert_eq!(Config::default().image.compression.to_string(), "zstd:3");
        let e = err("[image]\ncompression = \"zstd:99\"\n");
        assert!(e.contains("line 2 (key `image.compression`)") && e.contains("zstd:N"), "{e}");
    }

    #[test]
    fn store_paths_parse() {
        let c = Config::parse(
            "[store]\nuser_dir = \"/home/u/.shoal\"\nsite_dir = \"/srv/shoal\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.store.site_dir.as_deref(), Some(Path::new("/srv/shoal")));
        assert_eq!(c.store.user_dir.as_deref(), Some(Path::new("/home/u/.shoal")));
    }

    #[test]
    fn unknown_key_names_key_line_and_file() {
        let e = err("[store]\nsite_dir = \"/srv\"\nsite_dri = \"/srv\"\n");
        assert!(e.contains("/etc/shoal/shoal.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("site_dri"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let e = err("[stor]\nsite_dir = \"/srv\"\n");
        assert!(e.contains("stor"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("# site\n[store]\nsite_dir = 42\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("store.site_dir"), "{e}");
        assert!(e.contains("/etc/shoal/shoal.toml"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(&missing).unwrap_err(),
            ConfigError::Read { .. }
        ));
    }
}
