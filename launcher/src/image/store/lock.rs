//! Locks that die with their holder (flock: released by the kernel when the
//! process exits or is killed, also over NFS where Linux maps flock to
//! byte-range locks), and work directories with names no other process on
//! any node can pick.

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};

/// An exclusive lock held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Waits for the lock on `path` (created if missing).
    ///
    /// `gc` removes lock files nobody holds, holding the lock while it
    /// unlinks: a waiter that opened the file before then gets a lock on a
    /// file no longer at `path`, so the lock only counts when `path` still
    /// names the locked file; otherwise it is taken again on the new one.
    pub fn acquire(path: &Path) -> io::Result<Lock> {
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            file.lock()?;
            if still_at(&file, path)? {
                return Ok(Lock {
                    _file: file,
                    path: path.to_path_buf(),
                });
            }
        }
    }

    /// Takes the lock on an existing `path` if nobody holds it (none if
    /// the file was removed or replaced meanwhile).
    pub fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        let file = OpenOptions::new().write(true).open(path)?;
        match file.try_lock() {
            Ok(()) if still_at(&file, path)? => Ok(Some(Lock {
                _file: file,
                path: path.to_path_buf(),
            })),
            Ok(()) | Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn still_at(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A name unique across nodes sharing a filesystem: node name, pid and a
/// random part (the kernel's hostname is per UTS namespace, which is how
/// the test cluster's nodes differ; the random part covers the rest).
pub fn unique_name() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    // RandomState is seeded from the OS's random source.
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{host}-{}-{:016x}", std::process::id(), h.finish())
}

/// A directory for one pull or import under the store's `tmp/`, locked for
/// its whole life through `NAME.lock`. The lock file appears under its final
/// name already locked (created and locked under a `.new` name, then
/// renamed), so `gc` never mistakes a live work dir for a stale one.
#[derive(Debug)]
pub struct WorkDir {
    dir: PathBuf,
    lock: Option<Lock>,
}

impl WorkDir {
    pub fn create(tmp: &Path) -> io::Result<WorkDir> {
        fs::create_dir_all(tmp)?;
        let name = unique_name();
        let new = tmp.join(format!(".{name}.lock.new"));
        let mut lock = Lock::acquire(&new)?;
        let final_lock = tmp.join(format!("{name}.lock"));
        fs::rename(&new, &final_lock)?;
        lock.path = final_lock;
        let dir = tmp.join(&name);
        fs::create_dir(&dir)?;
        Ok(WorkDir {
            dir,
            lock: Some(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(lock) = self.lock.take() {
            let _ = fs::remove_file(lock.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_not_taken_twice_and_dies_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = Lock::acquire(&p).unwrap();
        assert!(Lock::try_acquire(&p).unwrap().is_none());
        drop(held);
        assert!(Lock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn work_dirs_are_unique_locked_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let a = WorkDir::create(dir.path()).unwrap();
        let b = WorkDir::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
        let lock = a.path().with_extension("lock");
        assert!(
            Lock::try_acquire(&lock).unwrap().is_none(),
            "live work dir must be locked"
        );
        drop(a);
        drop(b);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_waiter_whose_lock_file_was_removed_under_it_locks_the_new_one() {
        // Issue 18: gc removes lock files nobody holds, while holding them;
        // a waiter that opened the old file must not count its lock, or it
        // and a newcomer on a new file would both hold "the" lock.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let gc = Lock::acquire(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let lock = Lock::acquire(&p).unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(lock);
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        fs::remove_file(&path).unwrap();
        drop(gc);
        rx.recv().unwrap();
        // The waiter holds the lock on the file now at `path`.
        assert!(path.exists(), "the waiter did not take the lock on a new file");
        assert!(Lock::try_acquire(&path).unwrap().is_none(), "two holders of one lock");
        waiter.join().unwrap();
        assert!(Lock::try_acquire(&path).unwrap().is_some());
    }
}
