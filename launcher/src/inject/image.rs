//! A read-only view of an image's files, so the ABI check can look inside a
//! squashfs without mounting it (no privilege, no FUSE) and inside a plain
//! directory in tests and for unpacked trees.
//!
//! Symlinks are resolved here, with the image's root as `/`, one component
//! at a time: an absolute link in the image (`/lib -> /usr/lib`) never leads
//! to the host's files, and `..` stops at the image root. Implementations
//! only answer for paths whose parent components are not symlinks.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// What a path is, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
    /// A character or block device node.
    Device,
    Other,
}

/// Read-only access to an image's tree. Paths are absolute inside the image.
pub trait ImageFs {
    /// The image, for messages (`/path/to/image.sqfs`).
    fn describe(&self) -> String;
    /// `lstat`: the final component is not followed.
    fn entry(&self, path: &Path) -> io::Result<EntryKind>;
    /// Names in a directory (resolved path).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Contents of a regular file (resolved path).
    fn read(&self, file: &Path) -> io::Result<Vec<u8>>;
}

/// Longest symlink chain followed, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// Follows symlinks in `path` inside the image and returns the real path.
pub fn resolve(fs: &dyn ImageFs, path: &Path) -> io::Result<PathBuf> {
    let mut done = PathBuf::from("/");
    let mut todo: Vec<OsString> = components(path);
    todo.reverse(); // a stack: next component last
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&c);
        match fs.entry(&next)? {
            EntryKind::Symlink(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "{}: too many levels of symlinks",
                        path.display()
                    )));
                }
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                todo.extend(components(&target).into_iter().rev());
            }
            _ => done = next,
        }
    }
    Ok(done)
}

/// The names along `path` (`..` kept, `.` and the root dropped).
pub(crate) fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Kind of the resolved path, or None when it does not exist.
pub fn kind_of(fs: &dyn ImageFs, path: &Path) -> Option<EntryKind> {
    let real = resolve(fs, path).ok()?;
    fs.entry(&real).ok()
}

/// `stat`: the real path and what it is, symlinks followed (the final one too).
pub fn follow(fs: &dyn ImageFs, path: &Path) -> io::Result<(PathBuf, EntryKind)> {
    let real = resolve(fs, path)?;
    let kind = fs.entry(&real)?;
    Ok((real, kind))
}

/// The paths matching an absolute glob `pattern`, unresolved (symlinks keep
/// their names), sorted: what `glob::glob` finds on a real tree, read
/// through `fs` so a test can stand in for the host. A literal component
/// must exist (a dangling symlink counts); a wildcard one is matched
/// against the directory's names (`*` matches a leading dot); `**` is any
/// number of directories. Unreadable directories are skipped.
pub fn glob(fs: &dyn ImageFs, pattern: &str) -> Result<Vec<PathBuf>, glob::PatternError> {
    glob::Pattern::new(pattern)?; // the whole pattern's error, as glob::glob gives it
    let mut current = vec![PathBuf::from("/")];
    for part in pattern.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let mut next = Vec::new();
        if part == "**" {
            for dir in current {
                sub_dirs(fs, &dir, &mut next);
            }
        } else if !part.contains(['*', '?', '[']) {
            for dir in current {
                let path = if part == ".." {
                    dir.parent().unwrap_or(&dir).to_path_buf()
                } else {
                    dir.join(part)
                };
                let parent = resolve(fs, &dir);
                if part == ".." || parent.is_ok_and(|p| fs.entry(&p.join(part)).is_ok()) {
                    next.push(path);
                }
            }
        } else {
            let pat = glob::Pattern::new(part)?;
            for dir in current {
                let Ok(names) = resolve(fs, &dir).and_then(|real| fs.list(&real)) else {
                    continue;
                };
                next.extend(names.iter().filter(|n| pat.matches(n)).map(|n| dir.join(n)));
            }
        }
        current = next;
    }
    current.sort();
    current.dedup();
    Ok(current)
}

/// `dir` and every directory below it, symlinked ones followed (as
/// `glob::glob` does) but never back into a directory they are inside of.
fn sub_dirs(fs: &dyn ImageFs, dir: &Path, out: &mut Vec<PathBuf>) {
    let mut todo: Vec<(PathBuf, Vec<PathBuf>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((d, mut above)) = todo.pop() {
        let Ok(real) = resolve(fs, &d) else { continue };
        if above.contains(&real) {
            continue; // a symlink loop
        }
        out.push(d.clone());
        above.push(real.clone());
        for name in fs.list(&real).unwrap_or_default() {
            if kind_of(fs, &d.join(&name)) == Some(EntryKind::Dir) {
                todo.push((d.join(name), above.clone()));
            }
        }
    }
}

/// An image unpacked in a host directory.
pub struct DirImage {
    root: PathBuf,
}

impl DirImage {
    pub fn new(root: impl Into<PathBuf>) -> DirImage {
        DirImage { root: root.into() }
    }

    fn host(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl ImageFs for DirImage {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn entry(&self, path: &Path) -> io::Result<EntryKind> {
        let meta = fs::symlink_metadata(self.host(path))?;
        let ft = meta.file_type();
        Ok(if ft.is_symlink() {
            EntryKind::Symlink(fs::read_link(self.host(path))?)
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_char_device() || ft.is_block_device() {
            EntryKind::Device
        } else {
            EntryKind::Other
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(self.host(dir))? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        if self.entry(file)? != EntryKind::File {
            return Err(io::Error::other(format!(
                "{}: not a regular file",
                file.display()
            )));
        }
        fs::read(self.host(file))
    }
}

/// A squashfs image file read in-process with backhand (zstd, gzip, lz4).
pub struct SquashfsImage {
    path: PathBuf,
    reader: backhand::FilesystemReader<'static>,
    /// Path -> index in `reader.root.nodes`.
    index: HashMap<PathBuf, usize>,
    children: BTreeMap<PathBuf, Vec<String>>,
}

impl SquashfsImage {
    pub fn open(path: &Path) -> io::Result<SquashfsImage> {
        let file = fs::File::open(path)?;
        let reader = backhand::FilesystemReader::from_reader(BufReader::new(file)).map_err(|e| {
            io::Error::other(match e {
                backhand::BackhandError::UnsupportedCompression(kind) => format!(
                    "squashfs compressed with {kind}, which Shoal does not read (zstd, gzip, lz4 only); \
                     repack it with `mksquashfs DIR FILE -comp zstd`"
                ),
                e => format!("not a readable squashfs image ({e})"),
            })
        })?;
        let mut index = HashMap::new();
        let mut children: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (i, node) in reader.root.nodes.iter().enumerate() {
            let p = Path::new("/").join(node.fullpath.strip_prefix("/").unwrap_or(&node.fullpath));
            if let (Some(parent), Some(name)) = (p.parent(), p.file_name()) {
                children
                    .entry(parent.to_path_buf())
                    .or_default()
                    .push(name.to_string_lossy().into_owned());
            }
            index.insert(p, i);
        }
        Ok(SquashfsImage {
            path: path.to_path_buf(),
            reader,
            index,
            children,
        })
    }

    fn node(&self, path: &Path) -> io::Result<&backhand::Node<backhand::SquashfsFileReader>> {
        self.index
            .get(path)
            .map(|&i| &self.reader.root.nodes[i])
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: not in image", path.display()),
                )
            })
    }
}

impl ImageFs for SquashfsImage {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn entry(&self, path: &Path) -> io::Result<EntryKind> {
        use backhand::InnerNode;
        Ok(match &self.node(path)?.inner {
            InnerNode::File(_) => EntryKind::File,
            InnerNode::Dir(_) => EntryKind::Dir,
            InnerNode::Symlink(l) => EntryKind::Symlink(l.link.clone()),
            InnerNode::CharacterDevice(_) | InnerNode::BlockDevice(_) => EntryKind::Device,
            _ => EntryKind::Other,
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        match self.entry(dir)? {
            EntryKind::Dir => Ok(self.children.get(dir).cloned().unwrap_or_default()),
            _ => Err(io::Error::other(format!(
                "{}: not a directory",
                dir.display()
            ))),
        }
    }

    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        match &self.node(file)?.inner {
            backhand::InnerNode::File(f) => {
                let mut bytes = Vec::with_capacity(f.file_len());
                self.reader.file(f).reader().read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            _ => Err(io::Error::other(format!(
                "{}: not a regular file",
                file.display()
            ))),
        }
    }
}

/// Opens an image for inspection: a directory tree or a squashfs file.
pub fn open(path: &Path) -> io::Result<Box<dyn ImageFs>> {
    if fs::metadata(path)?.is_dir() {
        Ok(Box::new(DirImage::new(path)))
    } else {
        Ok(Box::new(SquashfsImage::open(path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_image_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        fs::write(root.join("usr/lib/x/libfoo.so.1.2"), b"x").unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("libfoo.so.1.2", root.join("usr/lib/x/libfoo.so.1")).unwrap();
        // Escapes are clamped at the image root, never the host's /etc.
        symlink("../../../../../etc/passwd", root.join("usr/lib/x/evil")).unwrap();
        let img = DirImage::new(root);
        assert_eq!(
            resolve(&img, Path::new("/lib/x/libfoo.so.1")).unwrap(),
            Path::new("/usr/lib/x/libfoo.so.1.2")
        );
        assert_eq!(
            resolve(&img, Path::new("/usr/lib/x/evil"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve(&img, Path::new("/loop"))
            .unwrap_err()
            .to_string()
            .contains("too many"));
    }

    #[test]
    fn glob_reads_through_the_seam_like_glob_glob_on_a_real_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        for f in ["libmpi.so.12.1", "libmpi.so.12", ".hidden.so.1", "libz.so.1"] {
            fs::write(root.join("usr/lib/x").join(f), b"").unwrap();
        }
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("missing", root.join("usr/lib/x/libdangling.so")).unwrap();
        let img = DirImage::new(root);
        let names = |pattern: &str| -> Vec<String> {
            let ours: Vec<String> = glob(&img, pattern)
                .unwrap()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let mut real: Vec<String> = ::glob::glob(&format!("{}{pattern}", root.display()))
                .unwrap()
                .filter_map(Result::ok)
                .map(|p| format!("/{}", p.strip_prefix(root).unwrap().display()))
                .collect();
            real.sort();
            assert_eq!(ours, real, "{pattern}");
            ours
        };
        // Through a symlinked directory, names kept as written.
        assert_eq!(names("/lib/x/libmpi.so.12*"), ["/lib/x/libmpi.so.12", "/lib/x/libmpi.so.12.1"]);
        assert_eq!(names("/usr/lib/*/libz.so.[0-9]"), ["/usr/lib/x/libz.so.1"]);
        // `*` matches a leading dot, as glob::glob's default options do.
        assert_eq!(names("/usr/lib/x/.h*"), ["/usr/lib/x/.hidden.so.1"]);
        // A literal path: there (a dangling link counts) or not.
        assert_eq!(names("/usr/lib/x/libdangling.so"), ["/usr/lib/x/libdangling.so"]);
        assert!(names("/usr/lib/x/libnone.so").is_empty());
        assert!(names("/usr/lib/x/libz.so.1/*").is_empty());
        assert_eq!(names("/**/libz.so.1"), ["/lib/x/libz.so.1", "/usr/lib/x/libz.so.1"]);
        assert!(glob(&img, "/usr/[").is_err());
        // A symlink back up the tree is not walked round and round.
        symlink("..", root.join("usr/lib/x/up")).unwrap();
        let found = glob(&img, "/usr/**/libz.so.1").unwrap();
        assert_eq!(found, [Path::new("/usr/lib/x/libz.so.1")]);
    }
}
