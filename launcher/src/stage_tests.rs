//! Unit tests of `stage` (moved out of it to keep the file to one job).

use super::*;
use std::io::Cursor;

fn image(byte: u8, len: usize) -> (Expected, Vec<u8>) {
    let data = vec![byte; len];
    let digest: Digest = format!("sha256:{:064x}", byte as u64 + 1).parse().unwrap();
    let sha256 = sha256_hex(&data[..]).unwrap();
    (
        Expected {
            digest,
            sha256,
            size: len as u64,
            scope: Scope::Site,
            owner: (0, 0),
        },
        data,
    )
}

fn src(data: &[u8]) -> impl FnOnce() -> io::Result<Source> + '_ {
    move || Ok(Box::new(Cursor::new(data.to_vec())) as Source)
}

#[test]
fn stages_once_then_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
    let (exp, data) = image(1, 100);
    let (p, copied) = cache.stage(&exp, 7, src(&data)).unwrap();
    assert!(copied);
    assert_eq!(fs::read(&p).unwrap(), data);
    // A second job reuses it without reading the source.
    let (p2, copied) = cache
        .stage(&exp, 8, || {
            panic!("source opened for an image already staged")
        })
        .unwrap();
    assert_eq!(p, p2);
    assert!(!copied);
    assert!(p.starts_with(dir.path().join("n1")));
}

#[test]
fn nodes_have_separate_caches() {
    let dir = tempfile::tempdir().unwrap();
    let (exp, data) = image(1, 10);
    let a = NodeCache::open(dir.path(), "n1", 100)
        .unwrap()
        .stage(&exp, 1, src(&data))
        .unwrap()
        .0;
    let b = NodeCache::open(dir.path(), "n2", 100)
        .unwrap()
        .stage(&exp, 1, src(&data))
        .unwrap()
        .0;
    assert_ne!(a, b);
}

#[test]
fn user_images_are_kept_apart_per_user_and_owned_by_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
    let (site, data) = image(1, 10);
    let me = own_ids();
    let mine = Expected {
        scope: Scope::User,
        owner: (me.0, me.1),
        ..site.clone()
    };
    let theirs = Expected {
        scope: Scope::User,
        owner: (me.0 + 1, me.1),
        ..site.clone()
    };
    let p_site = cache.stage(&site, 1, src(&data)).unwrap().0;
    let p_mine = cache.stage(&mine, 1, src(&data)).unwrap().0;
    assert_ne!(p_site, p_mine);
    assert_ne!(cache.image_path(&mine), cache.image_path(&theirs));
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&p_mine).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (me.0, 0o400));
}

/// Reads like a slow copy, and looks at the copy in progress while it
/// runs: what another user on the node could open at that moment.
struct Watching {
    data: Cursor<Vec<u8>>,
    tmp: PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u32)>>>,
}

impl Read for Watching {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::MetadataExt;
        for e in fs::read_dir(&self.tmp)?.flatten() {
            let m = e.metadata()?;
            self.seen.lock().unwrap().push((m.uid(), m.mode() & 0o777));
        }
        let n = buf.len().min(4);
        self.data.read(&mut buf[..n])
    }
}

#[test]
fn a_user_image_is_private_from_its_first_byte() {
    // Regression (issue 18): the copy in tmp/ was created 0644 by root
    // and chmod'ed 0400 only at the end, so another user could open it
    // during the copy and keep reading the user's image.
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
    let (site, data) = image(1, 16);
    let me = own_ids();
    let mine = Expected {
        scope: Scope::User,
        owner: (me.0, me.1),
        ..site
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watching = Watching {
        data: Cursor::new(data.clone()),
        tmp: dir.path().join("n1/tmp"),
        seen: seen.clone(),
    };
    cache
        .stage(&mine, 1, move || Ok(Box::new(watching) as Source))
        .unwrap();
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "the copy was never seen in progress");
    for (uid, mode) in seen.iter() {
        assert_eq!(
            (*uid, mode & 0o077),
            (me.0, 0),
            "copy in progress was uid {uid} mode {mode:o}"
        );
    }
}

#[test]
fn a_node_name_is_one_path_component() {
    // Regression (issue 18): the node name was joined to the cache
    // directory unchecked; `../x` made root create and write the cache
    // outside it.
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    fs::create_dir(&cache_dir).unwrap();
    for bad in ["../escaped", "a/b", "..", ".", "", "n1\0"] {
        let err = NodeCache::open(&cache_dir, bad, 100).unwrap_err();
        assert!(matches!(err, StageError::NodeName(_)), "{bad:?}: {err}");
    }
    assert!(!dir.path().join("escaped").exists());
    assert!(valid_node_name("n1") && valid_node_name("node-01.rack_2"));
}

#[test]
fn a_cache_others_can_write_is_refused() {
    // Regression (issue 18): a cache directory writable by users (a
    // `node.cache_dir` under /tmp or made 0777) was used as it was, so a
    // user could plant `refs/KEY/JOB` or `.lock` symlinks that root then
    // created and truncated files through.
    let dir = tempfile::tempdir().unwrap();
    let open = fs::Permissions::from_mode(0o777);
    let cache_dir = dir.path().join("cache");
    fs::create_dir(&cache_dir).unwrap();
    fs::set_permissions(&cache_dir, open.clone()).unwrap();
    let err = NodeCache::open(&cache_dir, "n1", 100)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not safe") && err.contains("node.cache_dir"),
        "{err}"
    );
    assert!(
        !cache_dir.join("n1").exists(),
        "created inside an unsafe directory"
    );

    // A safe cache_dir whose node tree someone made writable.
    fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o755)).unwrap();
    NodeCache::open(&cache_dir, "n1", 100).unwrap();
    fs::set_permissions(cache_dir.join("n1/refs"), open.clone()).unwrap();
    let err = NodeCache::open(&cache_dir, "n1", 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("n1/refs"), "{err}");

    // A sticky world-writable directory above the cache (/tmp) is fine.
    let sticky = dir.path().join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    NodeCache::open(&sticky.join("cache"), "n1", 100).unwrap();
    // ... but not as the cache directory itself.
    let err = NodeCache::open(&sticky, "n2", 100).unwrap_err().to_string();
    assert!(err.contains("not safe"), "{err}");
}

#[test]
fn a_symlink_someone_else_owns_is_refused() {
    let me = own_ids();
    if me.0 != 0 {
        return; // chown to another user needs root (CI runs as root)
    }
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(4242), Some(4242)).unwrap();
    let err = NodeCache::open(&link, "n1", 100).unwrap_err().to_string();
    assert!(err.contains("symlink owned by uid 4242"), "{err}");
    assert!(!real.join("n1").exists());
}

#[test]
fn a_source_longer_or_shorter_than_recorded_is_cut_and_refused() {
    // Regression (issue 18): the copy read its source to the end, so a
    // pin naming `/dev/zero` (read as the user) filled the node's disk.
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1 << 30).unwrap();
    let (exp, _) = image(1, 100);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicU64>);
    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // "Endless" up to 4 MiB, so that a copy without the bound
            // ends (with a checksum error) rather than hangs the test.
            if self.0.load(std::sync::atomic::Ordering::Relaxed) > 4 << 20 {
                return Ok(0);
            }
            buf.fill(0);
            self.0
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(buf.len())
        }
    }
    let endless = Counting(read.clone());
    let err = cache
        .stage(&exp, 1, move || Ok(Box::new(endless) as Source))
        .unwrap_err();
    assert!(
        matches!(err, StageError::Size { actual: None, .. }),
        "{err}"
    );
    assert!(
        read.load(std::sync::atomic::Ordering::Relaxed) <= 101,
        "read past the recorded size"
    );
    let (short, data) = image(2, 100);
    let err = cache
        .stage(&Expected { size: 200, ..short }, 1, src(&data))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("holds 100 bytes, not the recorded 200"),
        "{err}"
    );
    assert_eq!(fs::read_dir(dir.path().join("n1/tmp")).unwrap().count(), 0);
    assert!(!cache.in_use(&exp.key()));
}

#[test]
fn the_cache_lock_is_free_while_a_source_is_read() {
    // Regression (issue 18): the cache lock was held across the copy,
    // so one user's source that never answers (a FIFO, their own FUSE
    // file) stalled every other user's staging on the node.
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
    let (exp, data) = image(1, 16);
    let lock_path = dir.path().join("n1/.lock");
    struct Probe {
        data: Cursor<Vec<u8>>,
        lock: PathBuf,
        free: Option<bool>,
        out: std::sync::Arc<std::sync::Mutex<Option<bool>>>,
    }
    impl Read for Probe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.free.is_none() {
                let other = File::options().write(true).open(&self.lock)?;
                let free = other.try_lock().is_ok();
                self.free = Some(free);
                *self.out.lock().unwrap() = Some(free);
            }
            self.data.read(buf)
        }
    }
    let out = std::sync::Arc::new(std::sync::Mutex::new(None));
    let probe = Probe {
        data: Cursor::new(data),
        lock: lock_path,
        free: None,
        out: out.clone(),
    };
    cache
        .stage(&exp, 1, move || Ok(Box::new(probe) as Source))
        .unwrap();
    assert_eq!(
        *out.lock().unwrap(),
        Some(true),
        "the cache lock was held while reading the source"
    );
    assert!(cache.image_path(&exp).is_file());
}

#[test]
fn clean_tmp_leaves_copies_in_progress_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
    let tmp = dir.path().join("n1/tmp");
    fs::write(tmp.join("dead"), b"x").unwrap();
    let live = File::create(tmp.join("live")).unwrap();
    live.lock().unwrap();
    cache.clean_tmp().unwrap();
    assert!(!tmp.join("dead").exists());
    assert!(tmp.join("live").exists());
}

/// The stager [`a_stager_killed_mid_copy_leaves_nothing_visible`]
/// SIGKILLs: run as a child process (`--ignored --exact`), it stages a
/// 64 MiB image from a source that dribbles.
#[test]
#[ignore = "helper: run by a_stager_killed_mid_copy_leaves_nothing_visible"]
fn kill_point_child() {
    let Some(dir) = std::env::var_os("SHOAL_TEST_KILL_CACHE") else {
        return;
    };
    struct Slow(u64);
    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let n = (buf.len() as u64).min(self.0).min(64 << 10) as usize;
            buf[..n].fill(7);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let (exp, _) = image(7, 0);
    let exp = Expected {
        size: 64 << 20,
        ..exp
    };
    let cache = NodeCache::open(Path::new(&dir), "n1", 1 << 30).unwrap();
    let _ = cache.stage(&exp, 99, || Ok(Box::new(Slow(64 << 20)) as Source));
}

#[test]
fn a_stager_killed_mid_copy_leaves_nothing_visible() {
    // Kill point (issue 18): a task SIGKILLed while it copies an image
    // into the node cache leaves no published image, a copy that
    // `clean_tmp` removes, no lock, and the next stage succeeds.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "stage::tests::kill_point_child",
            "--test-threads=1",
        ])
        .env("SHOAL_TEST_KILL_CACHE", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = dir.path().join("n1/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Until the copy has begun (some bytes in tmp/).
    loop {
        let started = fs::read_dir(&tmp)
            .map(|r| r.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false);
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never started copying"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1 << 30).unwrap();
    assert_eq!(
        fs::read_dir(dir.path().join("n1/images")).unwrap().count(),
        0,
        "a partial image was published"
    );
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        1,
        "the killed copy should be in tmp/"
    );
    // The dead job's epilog drops its reference and the dead copy
    // (regression, issue 18: nothing called `clean_tmp`, so every copy
    // `scancel` cut short stayed in tmp/ for good).
    cache.release_job(99).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("n1/refs")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the epilog left the dead copy");
    // No lock is left: the next job stages at once.
    let (exp, data) = image(8, 1000);
    let (p, copied) = cache.stage(&exp, 100, src(&data)).unwrap();
    assert!(copied && p.is_file());
}

/// The test process's own uid and gid (chown to them needs no root).
fn own_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata("/proc/self").unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn checksum_mismatch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap();
    let (mut exp, data) = image(1, 100);
    exp.sha256 = "0".repeat(64);
    let err = cache.stage(&exp, 7, src(&data)).unwrap_err();
    assert!(matches!(err, StageError::Checksum { .. }), "{err}");
    assert!(!cache.image_path(&exp).exists());
    assert_eq!(fs::read_dir(dir.path().join("n1/tmp")).unwrap().count(), 0);
    assert!(!cache.in_use(&exp.key()), "failed stage kept its reference");
}

#[test]
fn evicts_least_recently_used_unreferenced_images() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 250).unwrap();
    let (a, da) = image(1, 100);
    let (b, db) = image(2, 100);
    let (c, dc) = image(3, 100);
    cache.stage(&a, 1, src(&da)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    cache.stage(&b, 2, src(&db)).unwrap();
    cache.release_job(1).unwrap();
    cache.release_job(2).unwrap();
    // a is older: it goes, b stays.
    cache.stage(&c, 3, src(&dc)).unwrap();
    assert!(!cache.image_path(&a).exists());
    assert!(cache.image_path(&b).exists());
    assert!(cache.image_path(&c).exists());
}

#[test]
fn images_in_use_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 150).unwrap();
    let (a, da) = image(1, 100);
    let (b, db) = image(2, 100);
    cache.stage(&a, 1, src(&da)).unwrap();
    let err = cache.stage(&b, 2, src(&db)).unwrap_err();
    match err {
        StageError::TooSmall { in_use, limit, .. } => {
            assert_eq!(in_use, 100);
            assert_eq!(limit, 150);
        }
        other => panic!("{other}"),
    }
    assert!(cache.image_path(&a).exists());
    assert!(!cache.image_path(&b).exists());
}

#[test]
fn image_larger_than_the_cache_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 50).unwrap();
    let (a, da) = image(1, 100);
    let err = cache.stage(&a, 1, src(&da)).unwrap_err().to_string();
    assert!(err.contains("node.cache_size"), "{err}");
}

#[test]
fn a_source_that_stalls_is_given_up_after_the_stall_timeout_leaving_nothing() {
    // Regression (issue 18): a copy whose source stopped answering (a hung
    // network filesystem, the user's stopped FUSE server) waited for ever,
    // and Slurm 22.05 cannot signal a task in its privileged setup. The
    // source here is a real pipe from a live process that sends 100 bytes
    // and then nothing, holding its end open.
    let dir = tempfile::tempdir().unwrap();
    let cache = NodeCache::open(dir.path(), "n1", 1000).unwrap().with_stall_timeout(Duration::from_secs(1));
    let (exp, _) = image(3, 500);
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "head -c 100 /dev/zero; exec sleep 120"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = writer.stdout.take().unwrap();
    let started = std::time::Instant::now();
    let err = cache.stage(&exp, 5, move || Ok(Box::new(pipe) as Source)).unwrap_err();
    let took = started.elapsed();
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(matches!(err, StageError::Stalled { copied: 100, expected: 500, .. }), "{err}");
    assert!(err.to_string().contains("gave no data for 1 s") && err.to_string().contains("node.stall_timeout"), "{err}");
    assert!(took < Duration::from_secs(10), "gave up only after {took:?}");
    // Nothing partial left, no reference, the cache lock free, and the
    // next stage of the same image works.
    assert_eq!(fs::read_dir(dir.path().join("n1/tmp")).unwrap().count(), 0);
    assert!(!cache.in_use(&exp.key()));
    assert!(!cache.image_path(&exp).exists());
    let lock = File::options().write(true).open(dir.path().join("n1/.lock")).unwrap();
    assert!(lock.try_lock().is_ok(), "the cache lock is still held");
    drop(lock);
    let (exp, data) = image(3, 500);
    assert!(cache.stage(&exp, 6, src(&data)).unwrap().1);
}
