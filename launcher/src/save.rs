//! Saving a container (`--container-save`, `shoal run --save`): its root
//! as it is now (the image plus the writable layer, whiteouts and opaque
//! directories honoured) written as a squashfs file, which a later job or
//! `shoal run` runs as an image, with the run settings it was started with.
//!
//! How: the project's own writer (`layers_to_squashfs`, the one that
//! flattens registry layers) is given two layers, read through pipes, never
//! stored: the image as a tar stream (`sqfs2tar` of its squashfs, xattrs
//! included), and the writable layer as an OCI layer (an overlayfs
//! whiteout, a 0:0 character device, becomes `.wh.NAME`; an opaque
//! directory gets `.wh..wh..opq`; the xattrs the converter keeps travel as
//! PAX records). The flattener then applies the layer exactly as it
//! applies a registry image's, so a file deleted in the container is not
//! in the saved image. The run settings (Env, Entrypoint, Cmd, WorkingDir)
//! go in the file's trailer ([`crate::image::trailer`]).
//!
//! Who: the caller runs [`write`] as the user (the plugin on a thread of
//! the user's ids, `shoal run` as itself); every entry of the layer is
//! opened relative to its directory without following links. Written to a
//! temporary file beside the output and renamed over it.
//!
//! Must never: follow a link in the layer, or leave a partial output.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::image::convert::{self, Layer, LayerCompression, SquashOptions};
use crate::image::manifest::ImageConfig;
use crate::container::sys;
use crate::image::trailer;

/// Which xattrs overlayfs kept its markers in: `trusted.overlay.*` (a
/// layer root mounted, the plugin's) or `user.overlay.*` (`userxattr`, an
/// overlay mounted in a user namespace: `shoal run`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marks {
    Trusted,
    User,
}

impl Marks {
    fn name(self, what: &str) -> CString {
        let ns = match self {
            Marks::Trusted => "trusted",
            Marks::User => "user",
        };
        CString::new(format!("{ns}.overlay.{what}")).expect("no NUL")
    }
}

/// The upper layer's directories marked opaque (paths relative to the
/// layer; read by whoever can read `marks`' xattrs: root for trusted
/// ones). Redirects and metacopy (off by default in overlayfs, never
/// turned on by Shoal) would need the lower layer to resolve: refused, not
/// saved wrong.
pub fn overlay_marks(upper: BorrowedFd<'_>, marks: Marks) -> Result<BTreeSet<PathBuf>, String> {
    let (opaque_name, redirect_name) = (marks.name("opaque"), marks.name("redirect"));
    let mut opaque = BTreeSet::new();
    let mut stack = vec![(PathBuf::new(), open_dir(Some(upper), Path::new("."), libc::O_RDONLY).map_err(|e| e.to_string())?)];
    while let Some((rel, dir)) = stack.pop() {
        if sys::fgetxattr(dir.as_fd(), &opaque_name).as_deref() == Some(b"y") {
            opaque.insert(rel.clone());
        }
        if sys::fgetxattr(dir.as_fd(), &redirect_name).is_some() {
            return Err(format!("/{} was renamed with overlayfs redirects, which saving does not follow", rel.display()));
        }
        for (name, kind) in sys::dir_entries(dir.as_fd()).map_err(|e| format!("/{}: {e}", rel.display()))? {
            if kind == libc::DT_DIR {
                let fd = open_dir(Some(dir.as_fd()), Path::new(&name), libc::O_RDONLY).map_err(|e| format!("/{}: {e}", rel.join(&name).display()))?;
                stack.push((rel.join(&name), fd));
            }
        }
    }
    Ok(opaque)
}

/// The directory `out` is written in and a temporary name there (`what`
/// tells a save's from a check's).
pub fn temp_beside(out: &Path, what: &str) -> Result<(PathBuf, PathBuf), String> {
    let name = out.file_name().ok_or("give a file name")?.to_string_lossy().into_owned();
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let tmp = dir.join(format!(".{name}.shoal-{what}-{}", std::process::id()));
    Ok((dir, tmp))
}

/// As the user: the image and the changed layer (with its opaque
/// directories, [`overlay_marks`]) into the project's writer, the run
/// settings `config` in the file's trailer (`image::trailer`), the output
/// beside `out`, renamed onto it when complete: a failed save leaves
/// nothing and an existing `out` untouched.
pub fn write(
    squashfs: &Path,
    layer: Option<(BorrowedFd<'_>, &BTreeSet<PathBuf>)>,
    out: &Path,
    opts: &SquashOptions,
    config: &ImageConfig,
) -> Result<convert::SquashSummary, String> {
    let (dir, tmp) = temp_beside(out, "save")?;
    // Checked first, as the user: the writer's own message would be vaguer.
    File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| format!("cannot create a file in {} ({e}): give a path in a directory you can write", dir.display()))?;
    let r = write_to(squashfs, layer, &tmp, opts).and_then(|summary| {
        let mut f = File::options().read(true).write(true).open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        trailer::append(&mut f, config).map_err(|e| format!("writing the run settings to {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, out).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), out.display()))?;
        Ok(summary)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn write_to(
    squashfs: &Path,
    layer: Option<(BorrowedFd<'_>, &BTreeSet<PathBuf>)>,
    tmp: &Path,
    opts: &SquashOptions,
) -> Result<convert::SquashSummary, String> {
    // The image as a tar stream.
    let mut image = Command::new("sqfs2tar")
        .arg(squashfs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sqfs2tar (squashfs-tools-ng): {e}"))?;
    let image_out = image.stdout.take().expect("piped");
    let image_err = image.stderr.take().expect("piped");
    let image_path = format!("/proc/self/fd/{}", image_out.as_raw_fd());
    let mut layers = vec![Layer { path: image_path.into(), compression: LayerCompression::Uncompressed, digest: format!("image {}", squashfs.display()), arriving: None }];
    let result = std::thread::scope(|s| {
        let errors = s.spawn(move || io::read_to_string(image_err).unwrap_or_default());
        let mut producer = None;
        let mut _keep = None;
        if let Some((upper, opaque)) = layer {
            // Close-on-exec: a writer that inherited the write end would keep
            // the layer from ever ending.
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            layers.push(Layer {
                path: format!("/proc/self/fd/{}", r.as_raw_fd()).into(),
                compression: LayerCompression::Uncompressed,
                digest: "the container's writable layer".into(),
                arriving: None,
            });
            _keep = Some(r);
            producer = Some(s.spawn(move || upper_tar(upper, opaque, File::from(w))));
        }
        let written = convert::layers_to_squashfs(&layers, tmp, opts, &|_| {}).map_err(|e| e.to_string());
        drop(_keep);
        let produced = producer.map_or(Ok(()), |p| p.join().unwrap_or_else(|_| Err("the layer reader panicked".into())));
        if written.is_err() {
            let _ = image.kill();
        }
        let status = image.wait().map_err(|e| e.to_string())?;
        let stderr = errors.join().unwrap_or_default();
        // The writer's error first; then why a layer could not be read.
        let summary = written?;
        produced?;
        if !status.success() {
            return Err(format!("sqfs2tar {}: {}", squashfs.display(), stderr.trim()));
        }
        Ok(summary)
    });
    drop(image_out);
    result
}

/// The upper layer as an OCI layer tar, written into `to` (a pipe). Every
/// entry is opened relative to its directory without following links.
fn upper_tar(upper: BorrowedFd<'_>, opaque: &BTreeSet<PathBuf>, to: File) -> Result<(), String> {
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, to));
    let root = open_dir(Some(upper), Path::new("."), libc::O_RDONLY).map_err(|e| format!("the writable layer: {e}"))?;
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![(PathBuf::new(), root)];
    let io_err = |p: &Path, e: io::Error| format!("/{}: {e}", p.display());
    while let Some((rel, dir)) = stack.pop() {
        if opaque.contains(&rel) {
            empty(&mut tar, &rel.join(".wh..wh..opq")).map_err(|e| io_err(&rel, e))?;
        }
        let mut names = sys::dir_entries(dir.as_fd()).map_err(|e| io_err(&rel, e))?;
        names.sort();
        for (name, _) in names {
            let path = rel.join(&name);
            let st = sys::fstatat_nofollow(dir.as_fd(), Path::new(&name)).map_err(|e| io_err(&path, e))?;
            let fmt = st.st_mode & libc::S_IFMT;
            let mut h = tar::Header::new_gnu();
            h.set_mode(st.st_mode & 0o7777);
            h.set_uid(st.st_uid.into());
            h.set_gid(st.st_gid.into());
            h.set_mtime(st.st_mtime.max(0) as u64);
            h.set_size(0);
            let r = match fmt {
                libc::S_IFCHR if st.st_rdev == 0 => {
                    // overlayfs's whiteout: NAME was deleted.
                    empty(&mut tar, &rel.join(format!(".wh.{}", name.to_string_lossy())))
                }
                libc::S_IFDIR => {
                    h.set_entry_type(tar::EntryType::Directory);
                    let fd = open_dir(Some(dir.as_fd()), Path::new(&name), libc::O_RDONLY).map_err(|e| io_err(&path, e))?;
                    kept_xattrs(&mut tar, fd.as_fd()).map_err(|e| io_err(&path, e))?;
                    stack.push((path.clone(), fd));
                    tar.append_data(&mut h, &path, io::empty())
                }
                libc::S_IFLNK => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    let target = sys::readlinkat(dir.as_fd(), Path::new(&name)).map_err(|e| io_err(&path, e))?;
                    tar.append_link(&mut h, &path, &target)
                }
                libc::S_IFREG => {
                    let key = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1 {
                        if let Some(first) = links.get(&key) {
                            h.set_entry_type(tar::EntryType::Link);
                            tar.append_link(&mut h, &path, first).map_err(|e| io_err(&path, e))?;
                            continue;
                        }
                        links.insert(key, path.clone());
                    }
                    let fd = sys::openat(Some(dir.as_fd()), Path::new(&name), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK, 0)
                        .map_err(|e| io_err(&path, e))?;
                    kept_xattrs(&mut tar, fd.as_fd()).map_err(|e| io_err(&path, e))?;
                    let file = File::from(fd);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(st.st_size as u64);
                    // What the file holds now; a file still being written
                    // would not match its size: an error, not a short file.
                    use io::Read;
                    tar.append_data(&mut h, &path, file.take(st.st_size as u64))
                }
                libc::S_IFIFO => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    tar.append_data(&mut h, &path, io::empty())
                }
                libc::S_IFCHR | libc::S_IFBLK => {
                    h.set_entry_type(if fmt == libc::S_IFCHR { tar::EntryType::Char } else { tar::EntryType::Block });
                    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
                    h.set_device_major(major).and_then(|()| h.set_device_minor(minor)).and_then(|()| tar.append_data(&mut h, &path, io::empty()))
                }
                // Sockets are not files an image keeps.
                _ => Ok(()),
            };
            r.map_err(|e| io_err(&path, e))?;
        }
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(|e| format!("writing the layer: {e}"))
}

/// The xattrs of an entry an image keeps (`convert::keep_xattr`; never
/// overlayfs's own `user.overlay.*` markers) as a PAX header before it.
fn kept_xattrs<W: Write>(tar: &mut tar::Builder<W>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut kept = Vec::new();
    for name in sys::flistxattr(fd)? {
        if !convert::keep_xattr(&name) || name.starts_with(b"user.overlay.") {
            continue;
        }
        let cname = CString::new(name.clone()).map_err(io::Error::other)?;
        if let Some(value) = sys::fgetxattr(fd, &cname) {
            kept.push((name, value));
        }
    }
    if kept.is_empty() {
        return Ok(());
    }
    convert::append_pax_xattrs(tar, &kept)
}

fn empty<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    tar.append_data(&mut h, path, io::empty())
}

/// Opens a directory (relative to `dir`), never following a link.
pub fn open_dir(dir: Option<BorrowedFd<'_>>, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    sys::openat(dir, path, flags | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upper layer's tar, read back: whiteouts and opaque markers in
    /// OCI form, files with their data, hard links as links.
    #[test]
    fn an_upper_layer_becomes_an_oci_layer() {
        let dir = std::env::temp_dir().join(format!("shoal-save-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc/opq")).unwrap();
        std::fs::write(dir.join("etc/new"), b"hello").unwrap();
        std::fs::hard_link(dir.join("etc/new"), dir.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.join("ln")).unwrap();
        let fd = open_dir(None, &dir, libc::O_PATH).unwrap();
        let opaque: BTreeSet<PathBuf> = [PathBuf::from("etc/opq")].into();
        let (r, w) = nix::unistd::pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let mut a = tar::Archive::new(File::from(r));
            let mut seen = Vec::new();
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                let mut data = String::new();
                io::Read::read_to_string(&mut e, &mut data).unwrap();
                seen.push((p, e.header().entry_type(), data));
            }
            seen
        });
        upper_tar(fd.as_fd(), &opaque, File::from(w)).unwrap();
        let seen = reader.join().unwrap();
        let find = |p: &str| seen.iter().find(|(n, _, _)| n == p).unwrap_or_else(|| panic!("{p} missing in {seen:?}"));
        assert_eq!(find("etc/opq/.wh..wh..opq").1, tar::EntryType::Regular);
        assert!(find("etc").1.is_dir());
        assert_eq!(find("ln").1, tar::EntryType::Symlink);
        let (a, b) = (find("etc/link"), find("etc/new"));
        // One holds the data, the other links to it.
        assert!(matches!((a.1, b.1), (tar::EntryType::Link, tar::EntryType::Regular) | (tar::EntryType::Regular, tar::EntryType::Link)));
        assert!(a.2 == "hello" || b.2 == "hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
