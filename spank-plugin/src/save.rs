//! `--container-save=PATH`: when a step's tasks have ended, on its first node
//! (node 0, as pyxis does), the container's root as it is now (the image
//! plus the writable layer, whiteouts and opaque directories honoured) is
//! written as a squashfs file at PATH, which a later job runs with
//! `--image=PATH`.
//!
//! How: the project's own writer (`layers_to_squashfs`, the one that
//! flattens registry layers) is given two layers, read through pipes, never
//! stored: the image as a tar stream (`sqfs2tar` of the staged squashfs),
//! and the writable layer as an OCI layer (an overlayfs whiteout, a 0:0
//! character device, becomes `.wh.NAME`; an opaque directory gets
//! `.wh..wh..opq`). The flattener then applies the layer exactly as it
//! applies a registry image's, so a file deleted in the container is not in
//! the saved image.
//!
//! Who: everything that reads or writes the user's data runs on a thread
//! of its own whose real, effective and saved ids are the user's (raw
//! syscalls: only that thread, which ends with the save), and so do the
//! tools it starts. Root does only two things first: opens the layer's
//! upper directory (under a root-only directory, made by the plugin) and
//! reads overlayfs's `trusted.overlay.opaque` markers there, which only
//! root can read, opening directories only, never following a link.
//! Written to a temporary file beside PATH and renamed over it: a failed
//! save leaves nothing (and an existing PATH untouched).

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use shoal::image::convert::{self, Layer, LayerCompression, SquashOptions};

use crate::layers::{self, Which};
use crate::pin::Scope;
use crate::spank::Spank;
use crate::stage::{self, ReadAt};
use crate::{job, options};

/// Tasks of the step on this node that have exited (slurmstepd).
static EXITED: AtomicU32 = AtomicU32::new(0);

/// slurmstepd, as each task exits (root): after the last one on the step's
/// first node, the save. Done here, not in slurmstepd's exit, because
/// Slurm then kills whatever the step still runs (the writer included),
/// and because srun waits for this: when srun returns, the file is there.
pub fn task_exit(spank: &Spank) -> Result<(), String> {
    let req = options::request();
    if req.save.is_none() || !crate::task::wanted(spank) {
        return Ok(());
    }
    let exited = EXITED.fetch_add(1, Ordering::SeqCst) + 1;
    if exited != spank.local_task_count().map_err(|e| e.to_string())? {
        return Ok(());
    }
    at_step_end(spank)
}

/// The save (root, slurmstepd), the step's processes gone.
fn at_step_end(spank: &Spank) -> Result<(), String> {
    let req = options::request();
    let Some(save) = req.save.clone() else { return Ok(()) };
    if spank.node_id().map_err(|e| e.to_string())? != 0 {
        return Ok(());
    }
    let fail = |e: String| format!("--container-save={}: {e}; nothing was written", save.display());
    let (pin, user_file) = crate::task::step_image().ok_or_else(|| fail("the step's image is not known here".into()))?;
    let config = options::config();
    let node = job::node_name()?;
    let job_id = spank.job_id().map_err(|e| e.to_string())?;
    let step_id = spank.step_id().map_err(|e| e.to_string())?;
    let user = job::identity(spank)?;
    let squashfs = match pin.scope {
        Scope::Site => stage::stage_site(&config, &node, job_id, &pin).map_err(fail)?.squashfs,
        Scope::User => {
            let file = user_file.ok_or_else(|| fail("the image file was not opened".into()))?;
            stage::stage_user(&config, &node, job_id, &pin, (user.uid, user.gid), move || {
                Ok(Box::new(ReadAt::new(file)) as shoal::stage::Source)
            })
            .map_err(fail)?
        }
    };
    let which = match &req.name {
        Some(n) => Which::Named(n.name.clone()),
        None => Which::Step(job::step_name(step_id)),
    };
    let upper = layers::container_dir(&config, &node, job_id, user.uid, &which).join("layer").join("upper");
    let env = spank.job_env().map_err(|e| e.to_string())?;
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| PathBuf::from(v));
    let out = if save.is_absolute() {
        save.clone()
    } else {
        get("PWD").or_else(|| get("SLURM_SUBMIT_DIR")).unwrap_or_else(|| "/".into()).join(&save)
    };
    // Root: the layer (if the step had one) and its opaque directories.
    let layer = match std::fs::symlink_metadata(&upper) {
        Ok(md) if md.is_dir() => {
            let fd = open_dir(None, &upper, libc::O_PATH).map_err(|e| fail(format!("{}: {e}", upper.display())))?;
            let marks = overlay_marks(fd.as_fd()).map_err(fail)?;
            Some((fd, marks))
        }
        _ => None,
    };
    let groups: Vec<u32> = user.groups.iter().map(|(_, g)| *g).collect();
    let opts = SquashOptions { compression: config.image.compression, block_size: config.image.block_size };
    let (uid, gid) = (user.uid, user.gid);
    let started = std::time::Instant::now();
    let summary = std::thread::scope(|s| {
        s.spawn(|| {
            become_user(uid, gid, &groups).map_err(|e| format!("cannot switch to uid {uid}: {e}"))?;
            write(&squashfs, layer.as_ref().map(|(fd, m)| (fd.as_fd(), m)), &out, &opts)
        })
        .join()
        .unwrap_or_else(|_| Err("the save thread panicked".into()))
    })
    .map_err(fail)?;
    crate::spank::log_info(&format!(
        "{}: job {job_id}.{}: saved the container to {} ({} bytes, {} entries, {:.1} s)",
        crate::TAG,
        job::step_name(step_id),
        out.display(),
        summary.size,
        summary.entries,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// This thread only, for good: real, effective and saved ids (raw
/// syscalls; glibc's wrappers would change every thread of slurmstepd).
fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let cvt = |r: libc::c_long| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: the groups slice lives across the call; integer arguments otherwise.
    unsafe {
        cvt(libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()))?;
        cvt(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        cvt(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

/// What root reads of the upper layer: directories marked opaque (paths
/// relative to the layer). Redirects and metacopy (off by default in
/// overlayfs, never turned on by Shoal) would need the lower layer to
/// resolve: refused, not saved wrong.
fn overlay_marks(upper: BorrowedFd<'_>) -> Result<BTreeSet<PathBuf>, String> {
    let mut opaque = BTreeSet::new();
    let mut stack = vec![(PathBuf::new(), open_dir(Some(upper), Path::new("."), libc::O_RDONLY).map_err(|e| e.to_string())?)];
    while let Some((rel, dir)) = stack.pop() {
        if xattr(dir.as_fd(), c"trusted.overlay.opaque").as_deref() == Some(b"y") {
            opaque.insert(rel.clone());
        }
        if xattr(dir.as_fd(), c"trusted.overlay.redirect").is_some() {
            return Err(format!("/{} was renamed with overlayfs redirects, which saving does not follow", rel.display()));
        }
        for (name, kind) in entries(dir.as_fd()).map_err(|e| format!("/{}: {e}", rel.display()))? {
            if kind == libc::DT_DIR {
                let fd = open_dir(Some(dir.as_fd()), Path::new(&name), libc::O_RDONLY).map_err(|e| format!("/{}: {e}", rel.join(&name).display()))?;
                stack.push((rel.join(&name), fd));
            }
        }
    }
    Ok(opaque)
}

/// As the user: the two layers into the project's writer, the output
/// beside `out`, renamed onto it when complete.
fn write(
    squashfs: &Path,
    layer: Option<(BorrowedFd<'_>, &BTreeSet<PathBuf>)>,
    out: &Path,
    opts: &SquashOptions,
) -> Result<convert::SquashSummary, String> {
    let name = out.file_name().ok_or("give a file name")?.to_string_lossy().into_owned();
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.shoal-save-{}", std::process::id()));
    // Checked first, as the user: the writer's own message would be vaguer.
    File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    let r = write_to(squashfs, layer, &tmp, opts).and_then(|summary| {
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
    let mut layers = vec![Layer { path: image_path.into(), compression: LayerCompression::Uncompressed, digest: format!("image {}", squashfs.display()) }];
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
        let mut names = entries(dir.as_fd()).map_err(|e| io_err(&rel, e))?;
        names.sort();
        for (name, _) in names {
            let path = rel.join(&name);
            let st = fstatat(dir.as_fd(), Path::new(&name)).map_err(|e| io_err(&path, e))?;
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
                    stack.push((path.clone(), fd));
                    tar.append_data(&mut h, &path, io::empty())
                }
                libc::S_IFLNK => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    let target = readlinkat(dir.as_fd(), Path::new(&name)).map_err(|e| io_err(&path, e))?;
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
                    let fd = openat(Some(dir.as_fd()), Path::new(&name), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK, 0)
                        .map_err(|e| io_err(&path, e))?;
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

fn empty<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    tar.append_data(&mut h, path, io::empty())
}

fn c(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn openat(dir: Option<BorrowedFd<'_>>, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let p = c(path)?;
    let d = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: valid NUL-terminated path; the returned fd is owned here.
    let fd = unsafe { libc::openat(d, p.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(dir: Option<BorrowedFd<'_>>, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    openat(dir, path, flags | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
}

fn fstatat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<libc::stat> {
    let p = c(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid path and a buffer of the right size.
    if unsafe { libc::fstatat(dir.as_raw_fd(), p.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

fn readlinkat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<PathBuf> {
    let p = c(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid path; the buffer's length is passed.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsStr::from_bytes(&buf)))
}

fn xattr(fd: BorrowedFd<'_>, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    // SAFETY: valid name; the buffer's length is passed.
    let n = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// A directory's entries (name, d_type), without `.` and `..`.
fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<(std::ffi::OsString, u8)>> {
    let fd = openat(Some(dir), Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: fdopendir takes ownership of the descriptor on success.
    let d = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(fd);
    let mut out = Vec::new();
    loop {
        // SAFETY: `d` is a valid DIR*; readdir's entry is read before the next call.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: as above; d_name is NUL-terminated.
        let (name, kind) = unsafe { (CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec(), (*e).d_type) };
        if name != b"." && name != b".." {
            out.push((OsStr::from_bytes(&name).to_os_string(), kind));
        }
    }
    // SAFETY: closes the DIR* and its descriptor.
    unsafe { libc::closedir(d) };
    Ok(out)
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
