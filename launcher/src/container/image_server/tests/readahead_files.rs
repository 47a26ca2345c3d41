//! Read-ahead: the files a real program's start loads, found as ld.so finds
//! them, and blocks shared between threads.

use super::*;

/// A merged-/usr tree like Debian's holding the host's `/usr/bin/true`, its
/// loader and libc (the test host is Debian 12, as CI is), with libc at
/// `libc_dir`. `None` where the host has no such files.
fn program_tree(root: &Path, libc_dir: &str) -> Option<()> {
    const HOST_LIBS: &str = "/usr/lib/x86_64-linux-gnu";
    let files = [("/usr/bin/true", "usr/bin/true"), (&*format!("{HOST_LIBS}/ld-linux-x86-64.so.2"), "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")];
    for (host, _) in &files {
        if !Path::new(host).is_file() {
            return None;
        }
    }
    for (host, inside) in files {
        let to = root.join(inside);
        fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        fs::copy(host, &to).expect("copy");
    }
    let libc = root.join(libc_dir.trim_start_matches('/')).join("libc.so.6");
    fs::create_dir_all(libc.parent().expect("parent")).expect("mkdir");
    fs::copy(format!("{HOST_LIBS}/libc.so.6"), &libc).ok()?;
    fs::create_dir_all(root.join("usr/lib64")).expect("mkdir");
    symlink("usr/bin", root.join("bin")).expect("symlink");
    symlink("usr/lib", root.join("lib")).expect("symlink");
    symlink("usr/lib64", root.join("lib64")).expect("symlink");
    symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root.join("usr/lib64/ld-linux-x86-64.so.2")).expect("symlink");
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    write(&root.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n");
    write(&root.join("etc/group"), b"root:x:0:\n");
    Some(())
}

fn hints(program: &str, path: &str, library_path: &str) -> Hints {
    Hints { program: program.into(), path: path.into(), library_path: library_path.into(), profile: Vec::new() }
}

fn readahead_paths(a: &mut Archive, h: &Hints) -> Vec<String> {
    readahead::files(a, h, &mut Default::default()).iter().map(|f| f.path.display().to_string()).collect()
}

#[test]
#[cfg(target_arch = "x86_64")]
fn readahead_finds_what_a_program_start_loads() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    if program_tree(&src, "/usr/lib/x86_64-linux-gnu").is_none() {
        eprintln!("skipped: the host has no Debian x86-64 /usr/bin/true, loader and libc");
        return;
    }
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    // Found in PATH through the /bin symlink; the loader through /lib64's
    // two links; libc in the default directories; the program last.
    let want = ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/true"];
    assert_eq!(readahead_paths(&mut a, &hints("true", "/nowhere:/bin", "")), want);
    assert_eq!(readahead_paths(&mut a, &hints("/bin/true", "", "")), want);
    // Not in the image, or relative (the cwd is not the image's): nothing.
    assert!(readahead_paths(&mut a, &hints("false", "/bin", "")).is_empty());
    assert!(readahead_paths(&mut a, &hints("bin/true", "/", "")).is_empty());

    // Everything read ahead is in the shared cache afterwards: a reader
    // on the first archive decompresses nothing more.
    readahead::run(a.share().expect("share").open().expect("open shared"), &hints("true", "/bin", ""), &Default::default());
    let cached = a.blocks().len();
    for f in readahead::files(&mut a, &hints("true", "/bin", ""), &mut Default::default()) {
        let inside = f.path.strip_prefix("/").expect("absolute");
        assert_eq!(read_all(&mut a, &f.layout), fs::read(src.join(inside)).expect("source"), "{}", f.path.display());
    }
    assert_eq!(a.blocks().len(), cached, "reading what was read ahead decompressed blocks again");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn readahead_follows_ld_library_path() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    if program_tree(&src, "/opt/site/lib").is_none() {
        eprintln!("skipped: the host has no Debian x86-64 /usr/bin/true, loader and libc");
        return;
    }
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "gzip", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    let found = readahead_paths(&mut a, &hints("true", "/bin", "/elsewhere::/opt/site/lib"));
    assert_eq!(found, ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/opt/site/lib/libc.so.6", "/usr/bin/true"]);
    // Where ld.so would not look, neither does read-ahead.
    let found = readahead_paths(&mut a, &hints("true", "/bin", ""));
    assert_eq!(found, ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/bin/true"]);
}

#[test]
fn readahead_skips_loops_escapes_and_malformed_programs() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    fs::create_dir_all(src.join("bin")).expect("mkdir");
    symlink("loop2", src.join("bin/loop1")).expect("symlink");
    symlink("loop1", src.join("bin/loop2")).expect("symlink");
    // Resolved inside the image: /etc/passwd of the image, not the host's.
    symlink("../../../../../../etc/passwd", src.join("bin/escape")).expect("symlink");
    fs::create_dir_all(src.join("etc")).expect("mkdir");
    write(&src.join("etc/passwd"), b"image's own\n");
    // ELF headers claiming what is not there.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(64, 0);
    elf[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // phoff
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&512u16.to_le_bytes());
    write(&src.join("bin/badphoff"), &elf);
    write(&src.join("bin/short"), b"\x7fELF\x02\x01");
    write(&src.join("bin/script"), b"#!/bin/sh\nexit 0\n");
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    assert!(readahead_paths(&mut a, &hints("loop1", "/bin", "")).is_empty());
    assert_eq!(readahead_paths(&mut a, &hints("escape", "/bin", "")), ["/etc/passwd"]);
    for name in ["badphoff", "short", "script"] {
        assert_eq!(readahead_paths(&mut a, &hints(name, "/bin", "")), [format!("/bin/{name}")], "{name}");
    }
    readahead::run(a.share().expect("share").open().expect("open shared"), &hints("badphoff", "/bin", "/x"), &Default::default());
}

#[test]
fn readahead_hints_survive_the_socket_encoding() {
    let mut h = hints("python3", "/usr/bin:/bin", "/opt/lib");
    assert_eq!(Hints::decode(&h.encode()), h);
    h.profile = b"/home/u/.cache/shoal/starts/0123".to_vec();
    assert_eq!(Hints::decode(&h.encode()), h);
    let empty = Hints::default();
    assert_eq!(Hints::decode(&empty.encode()), empty);
}

/// Threads reading one image through archives that share their blocks get
/// every file right, whoever decompressed a block, also while another
/// thread is decompressing it.
#[test]
fn shared_blocks_serve_concurrent_readers() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    build_tree(&src);
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-b", "4096", "-no-xattrs"]).expect("mksquashfs");
    let a = open(&image).expect("open");
    let mut paths = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                paths.push(e.path().strip_prefix(&src).expect("inside").to_path_buf());
            }
        }
    }
    let paths = Arc::new(paths);
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let shared = a.share().expect("share");
            let (paths, src) = (paths.clone(), src.clone());
            std::thread::spawn(move || {
                let mut b = shared.open().expect("open shared");
                // Each thread in its own order, so they meet on blocks.
                for k in 0..paths.len() {
                    let rel = &paths[(k * (i + 1) + i) % paths.len()];
                    let mut r = b.root();
                    for c in rel.components() {
                        let dir = b.inode(r).expect("dir");
                        r = b.lookup(r, &dir, c.as_os_str().as_bytes()).expect("lookup").expect("entry").inode_ref;
                    }
                    let Kind::File(f) = b.inode(r).expect("inode").kind else { panic!("{} is not a file", rel.display()) };
                    let l = b.layout(&f).expect("layout");
                    assert_eq!(read_all(&mut b, &l), fs::read(src.join(rel)).expect("source"), "{}", rel.display());
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader thread");
    }
    assert!(a.blocks().len() <= a.blocks().capacity());
}

/// A start profile's replay decompresses the blocks it names, found
/// through the image's own inodes, keeping pace with what was asked for;
/// entries naming nothing (another image, forged) are skipped.
#[test]
fn a_profile_replays_the_blocks_it_names_and_skips_the_rest() {
    require_mksquashfs!();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("tree");
    fs::create_dir(&src).expect("tree");
    write(&src.join("big"), &Rng(7).bytes(5 * 4096 + 100));
    let image = tmp.path().join("image.sqfs");
    mksquashfs(&src, &image, &["-comp", "zstd", "-b", "4096", "-no-xattrs"]).expect("mksquashfs");
    let mut a = open(&image).expect("open");
    let root = a.root();
    let dir = a.inode(root).expect("root");
    let big = a.lookup(root, &dir, b"big").expect("lookup").expect("entry").inode_ref;
    let replayer = || a.share().expect("share").open().expect("open shared");
    let demand = std::sync::atomic::AtomicUsize::new(0);

    // Nothing asked for yet: a replay of a few blocks runs within AHEAD.
    let mut b = replayer();
    super::super::profile::replay(&mut b, &[(big, 1), (big, 3), (big, 5)], &demand);
    assert_eq!(a.blocks().len(), 3, "blocks 1, 3 and the tail (fragment) decompressed");
    // Forged and foreign entries: not files, past the end, garbage references.
    super::super::profile::replay(&mut b, &[(root, 0), (big, 99), (u64::MAX, 0), (12345 << 16, 7)], &demand);
    assert_eq!(a.blocks().len(), 3, "nothing else decompressed");
    // What was replayed reads back right.
    let Kind::File(f) = a.inode(big).expect("inode").kind else { panic!("not a file") };
    let l = a.layout(&f).expect("layout");
    assert_eq!(read_all(&mut a, &l), fs::read(src.join("big")).expect("source"));
}
