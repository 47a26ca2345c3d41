//! Finds the libraries an image's loader can load: every directory the
//! loader searches by default (`/lib`, `/lib64`, `/usr/lib`, `/usr/lib64`,
//! the multiarch directories, `/usr/local/lib`), the directories of
//! `/etc/ld.so.conf` and its includes, and the directories named in
//! `/etc/ld.so.cache`. The cache is a hint: images that never ran `ldconfig`
//! have none or a stale one, so the directories are always scanned.
//!
//! The same scan over the host's `/` finds a host library's dependencies.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::elf::{self, ElfInfo};
use super::image::{kind_of, resolve, EntryKind, ImageFs};
use super::version::stem;

/// Directories every glibc loader searches, plus the usual local ones.
const STANDARD_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/local/lib64",
];
/// Parents of multiarch directories (`/usr/lib/x86_64-linux-gnu`).
const MULTIARCH_PARENTS: &[&str] = &["/lib", "/usr/lib", "/usr/local/lib"];

/// One library file found in the image.
#[derive(Debug, Clone)]
pub struct FoundLib {
    /// Where the loader finds it (`/lib/x86_64-linux-gnu/libmpi.so.40`).
    pub path: PathBuf,
    /// The real file behind it, resolved inside the image: what a bind mount covers.
    pub real: PathBuf,
    /// Its ELF facts, or why it has none (a linker script, a broken file).
    pub elf: Result<Rc<ElfInfo>, String>,
}

impl FoundLib {
    pub fn soname(&self) -> Option<&str> {
        self.elf.as_ref().ok().and_then(|e| e.soname.as_deref())
    }
}

/// The libraries of one image (or of the host), indexed by file name.
pub struct LibraryIndex<'a> {
    fs: &'a dyn ImageFs,
    /// Searched directories, resolved, in the order found.
    pub dirs: Vec<PathBuf>,
    /// File name -> paths (dir/name) where it occurs.
    names: BTreeMap<String, Vec<PathBuf>>,
    /// Parsed ELF files by real path; each file is read at most once.
    parsed: RefCell<HashMap<PathBuf, Result<Rc<ElfInfo>, String>>>,
    /// The image's `ldconfig`, when it has one.
    pub ldconfig: Option<PathBuf>,
}

impl<'a> LibraryIndex<'a> {
    /// Scans the image's library directories (names only; ELF files are
    /// read later, when a name is asked for).
    pub fn scan(fs: &'a dyn ImageFs) -> LibraryIndex<'a> {
        LibraryIndex::scan_with(fs, &[])
    }

    /// Like [`scan`](Self::scan), with `extra` directories searched first
    /// (a program's RUNPATH, see [`program_search_dirs`]).
    pub fn scan_with(fs: &'a dyn ImageFs, extra: &[PathBuf]) -> LibraryIndex<'a> {
        let mut wanted: Vec<PathBuf> = extra.to_vec();
        wanted.extend(ld_so_conf_dirs(fs, Path::new("/etc/ld.so.conf"), 0));
        wanted.extend(STANDARD_DIRS.iter().map(PathBuf::from));
        for parent in MULTIARCH_PARENTS {
            if let Ok(real) = resolve(fs, Path::new(parent)) {
                for name in fs.list(&real).unwrap_or_default() {
                    if name.contains("-linux-") {
                        wanted.push(Path::new(parent).join(name));
                    }
                }
            }
        }
        if let Ok(real) = resolve(fs, Path::new("/etc/ld.so.cache")) {
            if let Ok(bytes) = fs.read(&real) {
                for path in ld_so_cache_paths(&bytes) {
                    if let Some(dir) = Path::new(&path).parent() {
                        wanted.push(dir.to_path_buf());
                    }
                }
            }
        }
        // The loader tries hardware-specific subdirectories of each directory
        // before the directory itself (glibc-hwcaps/x86-64-v3 since glibc
        // 2.33; tls and platform directories before): a copy there would win
        // over a bind on the base directory's file, so they are scanned too.
        let mut with_subdirs = Vec::new();
        for dir in wanted {
            if let Ok(real) = resolve(fs, &dir) {
                let hwcaps = real.join("glibc-hwcaps");
                for sub in fs.list(&hwcaps).unwrap_or_default() {
                    with_subdirs.push(hwcaps.join(sub));
                }
                for sub in ["tls", "x86_64", "haswell", "avx512_1"] {
                    with_subdirs.push(real.join(sub));
                }
            }
            with_subdirs.push(dir);
        }
        let mut seen = BTreeSet::new();
        let mut dirs = Vec::new();
        let mut names: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for dir in with_subdirs {
            let Ok(real) = resolve(fs, &dir) else {
                continue;
            };
            if fs.entry(&real).ok() != Some(EntryKind::Dir) || !seen.insert(real.clone()) {
                continue;
            }
            for name in fs.list(&real).unwrap_or_default() {
                if name.contains(".so") {
                    names
                        .entry(name.clone())
                        .or_default()
                        .push(real.join(&name));
                }
            }
            dirs.push(real);
        }
        let ldconfig = [
            "/sbin/ldconfig",
            "/usr/sbin/ldconfig",
            "/bin/ldconfig",
            "/usr/bin/ldconfig",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| kind_of(fs, p) == Some(EntryKind::File));
        LibraryIndex {
            fs,
            dirs,
            names,
            parsed: RefCell::new(HashMap::new()),
            ldconfig,
        }
    }

    /// The image, for messages.
    pub fn describe(&self) -> String {
        self.fs.describe()
    }

    /// Every file whose name is `stem` or `stem.N...` (`libmpi.so`,
    /// `libmpi.so.40`, `libmpi.so.40.30.1` for stem `libmpi.so`), one entry
    /// per real file.
    pub fn by_stem(&self, stem: &str) -> Vec<FoundLib> {
        let mut out = Vec::new();
        let mut reals = BTreeSet::new();
        for (name, paths) in self.names.range(stem.to_string()..) {
            if !name.starts_with(stem) {
                break;
            }
            if name.len() != stem.len() && !name[stem.len()..].starts_with('.') {
                continue;
            }
            for path in paths {
                let Ok(real) = resolve(self.fs, path) else {
                    continue;
                };
                if self.fs.entry(&real).ok() != Some(EntryKind::File) || !reals.insert(real.clone())
                {
                    continue;
                }
                let elf = self.elf(&real);
                out.push(FoundLib {
                    path: path.clone(),
                    real,
                    elf,
                });
            }
        }
        out
    }

    /// Files whose ELF SONAME is `soname` (whatever their names).
    pub fn by_soname(&self, soname: &str) -> Vec<FoundLib> {
        self.by_stem(stem(soname))
            .into_iter()
            .filter(|f| f.soname() == Some(soname))
            .collect()
    }

    /// Looks `name` up the way the loader would for a DT_NEEDED entry: the
    /// first directory with an ELF file of that name for `machine` and class
    /// (a 32-bit copy in a multiarch directory is skipped, as the loader does).
    pub fn find(&self, name: &str, machine: u16, is_64: bool) -> Option<FoundLib> {
        let paths = self.names.get(name)?;
        paths.iter().find_map(|p| {
            let real = resolve(self.fs, p).ok()?;
            if self.fs.entry(&real).ok()? != EntryKind::File {
                return None;
            }
            let elf = self.elf(&real);
            let fits = elf
                .as_ref()
                .is_ok_and(|e| e.machine == machine && e.is_64 == is_64);
            fits.then(|| FoundLib {
                path: p.clone(),
                real,
                elf,
            })
        })
    }

    fn elf(&self, real: &Path) -> Result<Rc<ElfInfo>, String> {
        if let Some(done) = self.parsed.borrow().get(real) {
            return done.clone();
        }
        let parsed = self
            .fs
            .read(real)
            .map_err(|e| e.to_string())
            .and_then(|bytes| elf::parse(&bytes))
            .map(Rc::new);
        self.parsed
            .borrow_mut()
            .insert(real.to_path_buf(), parsed.clone());
        parsed
    }
}

/// The DT_RUNPATH/DT_RPATH directories of a program in the image
/// (`$ORIGIN` expanded): the loader searches them before the cache and
/// the default directories, so a library copy there must be found too.
/// Empty for a script (not ELF) or a program the user cannot read.
pub fn program_search_dirs(fs: &dyn ImageFs, program: &Path) -> Result<Vec<PathBuf>, String> {
    let real = resolve(fs, program).map_err(|e| format!("{}: {e}", program.display()))?;
    // An execute-only program (mode 0711) runs all the same, but its
    // RUNPATH cannot be read with the user's credentials: nothing to add.
    let Ok(bytes) = fs.read(&real) else {
        return Ok(Vec::new());
    };
    if !bytes.starts_with(b"\x7fELF") {
        // A script: the interpreter it names is what the loader starts.
        return Ok(Vec::new());
    }
    let info = elf::parse(&bytes).map_err(|e| format!("{}: {e}", program.display()))?;
    let origin = real.parent().unwrap_or(Path::new("/"));
    Ok(info
        .search_paths
        .iter()
        .map(|p| elf::expand_origin(Path::new(p), origin))
        .filter(|p| p.is_absolute())
        .collect())
}

/// Directories listed in an ld.so.conf file and the files it includes
/// (`include ld.so.conf.d/*.conf`, relative to the including file).
fn ld_so_conf_dirs(fs: &dyn ImageFs, conf: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(real) = resolve(fs, conf) else {
        return Vec::new();
    };
    let Ok(bytes) = fs.read(&real) else {
        return Vec::new();
    };
    if depth > 8 {
        return Vec::new();
    }
    let mut dirs = Vec::new();
    for line in String::from_utf8_lossy(&bytes).lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line
            .strip_prefix("include")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            for pattern in pattern.split_whitespace() {
                let pattern = conf.parent().unwrap_or(Path::new("/")).join(pattern);
                for file in glob_in_image(fs, &pattern) {
                    dirs.extend(ld_so_conf_dirs(fs, &file, depth + 1));
                }
            }
        } else if line.starts_with("hwcap") {
            continue;
        } else {
            dirs.extend(
                line.split([' ', '\t', ',', ':'])
                    .filter(|d| d.starts_with('/'))
                    .map(|d| PathBuf::from(d.split('=').next().unwrap_or(d))),
            );
        }
    }
    dirs
}

/// Expands a glob whose wildcards are in the last component only (the
/// form every ld.so.conf uses), sorted like glob(3).
fn glob_in_image(fs: &dyn ImageFs, pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let Ok(matcher) = glob::Pattern::new(&name.to_string_lossy()) else {
        return Vec::new();
    };
    let Ok(real) = resolve(fs, dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = fs
        .list(&real)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| matcher.matches(n))
        .map(|n| dir.join(n))
        .collect();
    out.sort();
    out
}

const CACHE_MAGIC_NEW: &[u8] = b"glibc-ld.so.cache1.1";
/// Size of the new-format header and of one entry (glibc's
/// `cache_file_new` and `file_entry_new`).
const CACHE_HEADER: usize = 48;
const CACHE_ENTRY: usize = 24;

/// Library paths named in an ld.so.cache (the glibc 2.x "new" format, alone
/// or after the old one). Anything malformed yields what was read so far:
/// the cache is only a hint.
pub fn ld_so_cache_paths(bytes: &[u8]) -> Vec<String> {
    let Some(start) = bytes
        .windows(CACHE_MAGIC_NEW.len())
        .position(|w| w == CACHE_MAGIC_NEW)
    else {
        return Vec::new();
    };
    let cache = &bytes[start..];
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(cache.get(at..at + 4)?.try_into().ok()?))
    };
    let Some(nlibs) = u32_at(20) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..nlibs as usize {
        let entry = CACHE_HEADER + i * CACHE_ENTRY;
        // Offsets of the strings are from the start of the new header.
        let Some(value) = u32_at(entry + 8) else {
            break;
        };
        let Some(tail) = cache.get(value as usize..) else {
            break;
        };
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        out.push(String::from_utf8_lossy(&tail[..end]).into_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hosts_loader_cache() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            return;
        };
        let paths = ld_so_cache_paths(&bytes);
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
        assert!(paths.iter().all(|p| p.starts_with('/')), "{paths:?}");
    }

    #[test]
    fn garbage_cache_is_empty_not_a_panic() {
        assert!(ld_so_cache_paths(b"glibc-ld.so.cache1.1\xff\xff\xff\xff").is_empty());
        let mut b = CACHE_MAGIC_NEW.to_vec();
        b.extend([0u8; 4]);
        b.extend(5u32.to_ne_bytes());
        b.extend([0u8; 100]);
        assert!(ld_so_cache_paths(&b).len() <= 5);
    }

    #[test]
    fn a_script_program_has_no_search_dirs_and_a_broken_elf_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/run.sh"), b"#!/bin/sh\nexec true\n").unwrap();
        std::fs::write(dir.path().join("bin/broken"), b"\x7fELF\x02").unwrap();
        let img = super::super::image::DirImage::new(dir.path());
        assert_eq!(program_search_dirs(&img, Path::new("/bin/run.sh")), Ok(Vec::new()));
        assert!(program_search_dirs(&img, Path::new("/bin/broken")).is_err());
    }

    #[test]
    fn hwcaps_subdirectories_are_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let v3 = dir
            .path()
            .join("usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3");
        std::fs::create_dir_all(&v3).unwrap();
        std::fs::write(v3.join("libfoo.so.1"), b"not elf").unwrap();
        std::fs::write(v3.join("../../libfoo.so.1"), b"not elf").unwrap();
        let img = super::super::image::DirImage::new(dir.path());
        let index = LibraryIndex::scan(&img);
        let found: Vec<PathBuf> = index
            .by_stem("libfoo.so")
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            found,
            [
                PathBuf::from("/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libfoo.so.1"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libfoo.so.1"),
            ]
        );
    }

    #[test]
    fn ld_so_conf_includes_relative_globs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
        std::fs::write(
            root.join("etc/ld.so.conf"),
            "# x\ninclude ld.so.conf.d/*.conf\n/opt/a\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/ld.so.conf.d/b.conf"), "/opt/b # comment\n").unwrap();
        std::fs::write(root.join("etc/ld.so.conf.d/c.txt"), "/opt/c\n").unwrap();
        let img = super::super::image::DirImage::new(root);
        assert_eq!(
            ld_so_conf_dirs(&img, Path::new("/etc/ld.so.conf"), 0),
            vec![PathBuf::from("/opt/b"), PathBuf::from("/opt/a")]
        );
    }
}
