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
use std::path::{Component, Path, PathBuf};

/// What a path is, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
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
}
