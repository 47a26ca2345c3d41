//! Hostile images (issue 18): layers and squashfs files crafted to escape,
//! pulled as the user and with `--site` as root, run with `shoal run` and
//! under `srun --image`. For each: nothing written outside the image, no
//! host file readable through it, no device, no privilege, a clear error
//! where the image is refused, nothing left behind.
//!
//! The images come from tests/testbed/mkhostile.py (busybox base plus the
//! hostile part) and are pushed to the test registry as `i18/hostile:TAG`.
//! Run under the cluster lock (see tests/run.sh): they use the registry and
//! the Slurm cluster.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{fails, ok, slurm, Testbed};

const REG: &str = "127.0.0.1:5443";
const SENTINEL: &str = "/tmp/i18-hostile-escaped";
/// MiB of zeros in the bomb's one file (its gzip layer is about 1 MiB).
const BOMB_MIB: u64 = 1024;

fn image(tag: &str) -> String {
    format!("{REG}/i18/hostile:{tag}")
}

/// Builds the hostile layout once and pushes every tag.
fn pushed() -> &'static Testbed {
    static PUSHED: OnceLock<()> = OnceLock::new();
    let tb = slurm();
    PUSHED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("i18-hostile-oci-{}", std::process::id()));
        let gen = support::repo_root().join("tests/testbed/mkhostile.py");
        ok(&tb.root(&format!("python3 {} {} {BOMB_MIB}", gen.display(), dir.display())));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let tags = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap());
        support::push_oci_tags(tb, &dir, tags, image);
    });
    tb
}

/// A user's own store and an empty config (no site store), in a fresh
/// directory of theirs; `sh` runs a script there as the user.
struct User<'a> {
    tb: &'a Testbed,
    dir: PathBuf,
}

impl<'a> User<'a> {
    fn new(tb: &'a Testbed, name: &str) -> User<'a> {
        User { tb, dir: tb.user_tempdir(name) }
    }

    fn sh(&self, script: &str) -> std::process::Output {
        self.tb.user(&format!(
            "set -e; cd '{d}'; export XDG_DATA_HOME='{d}/data' SSL_CERT_FILE='{ca}' SHOAL_CONFIG='{d}/shoal.toml'; \
             touch shoal.toml; shoal() {{ '{bin}' \"$@\"; }}; {script}",
            d = self.dir.display(),
            ca = self.tb.ca_cert.display(),
            bin = self.tb.shoal().display()
        ))
    }

    fn store(&self) -> PathBuf {
        self.dir.join("data/shoal")
    }

    /// The squashfs file of a pulled image (`shoal inspect --json`).
    fn squashfs(&self, img: &str) -> PathBuf {
        let info = ok(&self.sh(&format!("shoal inspect --json {img}")));
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        PathBuf::from(v["squashfs"].as_str().unwrap())
    }
}

/// A site store of root's own, in a fresh root-owned directory, with its
/// config; `sh` runs a script as root with `SHOAL_CONFIG` pointing at it.
struct Site<'a> {
    tb: &'a Testbed,
    dir: tempfile::TempDir,
}

impl<'a> Site<'a> {
    fn new(tb: &'a Testbed) -> Site<'a> {
        let dir = tempfile::Builder::new().prefix("i18-site-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("shoal.toml"),
            format!(
                "[store]\nsite_dir = \"{}/site\"\n[registries.\"{REG}\"]\nca_file = \"{}\"\n",
                dir.path().display(),
                tb.ca_cert.display()
            ),
        )
        .unwrap();
        Site { tb, dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("shoal.toml")
    }

    fn sh(&self, script: &str) -> std::process::Output {
        self.tb.root(&format!(
            "set -e; export SHOAL_CONFIG='{}'; shoal() {{ '{}' \"$@\"; }}; {script}",
            self.config().display(),
            self.tb.shoal().display()
        ))
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("site")
    }
}

/// Entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// No image and no work directory in a store.
fn assert_store_empty(store: &Path, what: &str) {
    let images = entries(&store.join("images/sha256"));
    let work: Vec<String> = entries(&store.join("tmp")).into_iter().filter(|n| store.join("tmp").join(n).is_dir()).collect();
    assert!(images.is_empty() && work.is_empty(), "{what} left images {images:?}, work dirs {work:?}");
}

/// Refused images and what their one-line error must say.
const REFUSED: &[(&str, &str)] = &[
    ("dotdot", "climbs out of the image root"),
    ("symlink-layer", "writing through a symlink is refused"),
    ("symlink-entry", "writing through it is refused"),
    ("hardlink-out", "climbs out of the image root"),
    ("hardlink-host", "not in the image as a file"),
    ("whiteout-dotdot", "climbs out of the image root"),
    ("duplicate", "holds `etc/i18-dup` twice"),
    // 1 GiB of zeros from a 1 MiB layer: past 512 MiB + 100 x the
    // compressed size, refused before it costs more time.
    ("bomb", "a decompression bomb"),
];

fn assert_refused(out: &std::process::Output, tag: &str, says: &str, who: &str) {
    let e = fails(out);
    assert!(e.contains(says) && e.contains("cannot be converted safely"), "{who}: {tag}: {e}");
    assert!(e.contains(&format!("i18/hostile:{tag}")) || e.contains("layer sha256:"), "{who}: {tag}: the error names no input: {e}");
    assert_eq!(e.trim().lines().count(), 1, "{who}: {tag}: not one line: {e}");
    assert!(!Path::new(SENTINEL).exists(), "{who}: {tag} wrote {SENTINEL}");
}

#[test]
fn refused_layers_fail_clearly_and_leave_nothing_as_the_user() {
    let tb = pushed();
    let u = User::new(tb, "hostile-refused");
    for (tag, says) in REFUSED {
        let started = Instant::now();
        let out = u.sh(&format!("/usr/bin/time -o rss -f '%M' '{}' pull -q {}", tb.shoal().display(), image(tag)));
        assert_refused(&out, tag, says, "user");
        assert_store_empty(&u.store(), tag);
        if *tag == "bomb" {
            // Bounded time and memory, with the error above.
            let rss: u64 = std::fs::read_to_string(u.dir.join("rss")).unwrap().lines().last().unwrap().trim().parse().unwrap();
            let took = started.elapsed();
            eprintln!("bomb: {BOMB_MIB} MiB of zeros refused in {took:?}, max RSS {rss} kB");
            assert!(rss < 256 * 1024, "refusing the bomb took {rss} kB of memory");
            assert!(took < Duration::from_secs(60), "refusing the bomb took {took:?}");
        }
    }
}

#[test]
fn refused_layers_fail_clearly_and_leave_nothing_as_root_with_site() {
    let tb = pushed();
    let site = Site::new(tb);
    for (tag, says) in REFUSED {
        assert_refused(&site.sh(&format!("shoal pull -q --site {}", image(tag))), tag, says, "root --site");
        assert_store_empty(&site.store(), tag);
    }
    // Root wrote nothing of them anywhere it was not asked to: not even /etc.
    assert!(!Path::new("/etc/i18-dup").exists() && !Path::new(SENTINEL).exists());
}

/// What each accepted image must show inside a container, as a script run
/// there (busybox sh), printing `PASS TAG` when it holds.
fn inside_checks(uid: u32) -> Vec<(&'static str, String)> {
    vec![
        ("absolute", "test \"$(cat /etc/i18-absolute)\" = inside && echo PASS absolute".into()),
        ("devices", "test ! -e /etc/i18-mem && test ! -e /etc/i18-sda && echo PASS devices".into()),
        // The setuid-root copy of busybox runs as the user.
        ("setuid", format!("test \"$(/usr/bin/id -u)\" = {uid} && test \"$(/usr/bin/id -g)\" != 0 && echo PASS setuid")),
        // The file-capability copy runs with no capability at all.
        (
            "caps",
            "/usr/local/bin/cat /proc/self/status | grep -E '^Cap(Eff|Prm|Amb):' | tr -s '\\t ' ' ' > /tmp/caps; \
             test \"$(grep -c ' 0000000000000000$' /tmp/caps)\" = 3 && echo PASS caps"
                .into(),
        ),
        (
            "host-links",
            "! cat /etc/i18-shadow 2>/dev/null && ! grep -q '^root:[^x]' /etc/passwd && echo PASS host-links".into(),
        ),
        ("deep", "test \"$(find /deep -name bottom | wc -l)\" = 1 && echo PASS deep".into()),
        ("wide", "test \"$(ls /wide | wc -l)\" = 5000 && echo PASS wide".into()),
        (
            "nonutf8",
            "test \"$(ls /nonutf8 | wc -l)\" = 2 && test \"$(cat /nonutf8/*/x)\" = x && echo PASS nonutf8".into(),
        ),
    ]
}

fn uid_of(tb: &Testbed) -> u32 {
    ok(&tb.user("id -u")).trim().parse().unwrap()
}

/// Host /etc/shadow lines and a root daemon's environment (slurmd's),
/// which must never show up inside a container.
fn host_secrets(tb: &Testbed) -> Vec<String> {
    let shadow = ok(&tb.root("cat /etc/shadow"));
    let environ = ok(&tb.root("tr '\\0' '\\n' < /proc/$(pgrep -o -x slurmd)/environ"));
    shadow
        .lines()
        .chain(environ.lines())
        .filter(|l| l.len() > 8)
        .map(str::to_string)
        .collect()
}

fn assert_no_secret(out: &str, secrets: &[String], what: &str) {
    for s in secrets {
        assert!(!out.contains(s.as_str()), "{what}: a host secret is visible inside: {s}");
    }
}

#[test]
fn accepted_images_are_harmless_under_shoal_run() {
    let tb = pushed();
    let u = User::new(tb, "hostile-run");
    let uid = uid_of(tb);
    let secrets = host_secrets(tb);
    for (tag, check) in inside_checks(uid) {
        ok(&u.sh(&format!("shoal pull -q {}", image(tag))));
        let out = ok(&u.sh(&format!("shoal run {} -- /bin/sh -c '{}; cat /etc/passwd /etc/group'", image(tag), check.replace('\'', "'\\''"))));
        assert!(out.contains(&format!("PASS {tag}")), "{tag}: {out}");
        assert_no_secret(&out, &secrets, tag);
    }
    assert!(!Path::new("/etc/i18-absolute").exists(), "an absolute name landed on the host");
    // No image server or container outlives its command.
    assert_no_server_left(tb, uid, "shoal run");
}

/// No image server of the user is left (it exits once its container is
/// gone; give it a moment to be reaped).
fn assert_no_server_left(tb: &Testbed, uid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = ok(&tb.root(&format!("pgrep -u {uid} -a 'shoal-fuse|squashfuse' || true")));
        if left.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: left running: {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn file_capabilities_and_setuid_bits_reach_the_image_but_not_the_process() {
    // The checks above would pass vacuously if the converter dropped the
    // bits; they are in the image (and inert there).
    let tb = pushed();
    let u = User::new(tb, "hostile-bits");
    ok(&u.sh(&format!("shoal pull -q {} && shoal pull -q {}", image("caps"), image("setuid"))));
    let sqfs = |tag: &str| u.squashfs(&image(tag)).display().to_string();
    let out = tempfile::tempdir().unwrap();
    let caps = ok(&tb.root(&format!(
        "unsquashfs -q -d {o}/c '{}' usr/local/bin/cat >/dev/null && getcap {o}/c/usr/local/bin/cat",
        sqfs("caps"),
        o = out.path().display()
    )));
    assert!(caps.contains("=ep") || caps.contains("+ep"), "no file capability in the image: {caps:?}");
    let list = ok(&tb.root(&format!("unsquashfs -lln '{}' usr/bin/id", sqfs("setuid"))));
    assert!(list.lines().any(|l| l.starts_with("-rws") && l.contains("0/0")), "no setuid-root file in the image:\n{list}");
}

#[test]
fn overlay_markers_and_security_labels_from_a_layer_never_reach_the_image() {
    // Issue 18: an untrusted layer's `trusted.overlay.*` / `user.overlay.*`
    // (whiteouts, opaque directories, redirects in an overlay stacked on
    // the image), SELinux labels and other `trusted.*` are dropped, pulled
    // as the user and with --site as root; the image's own `user.*` stays.
    let tb = pushed();
    let u = User::new(tb, "hostile-xattrs");
    let site = Site::new(tb);
    ok(&u.sh(&format!("shoal pull -q {}", image("xattrs"))));
    ok(&site.sh(&format!("shoal pull -q --site {}", image("xattrs"))));
    let site_sqfs = ok(&tb.root(&format!("find {} -name image.sqfs", site.store().display())));
    for sqfs in [u.squashfs(&image("xattrs")).display().to_string(), site_sqfs.trim().to_string()] {
        let file = ok(&tb.root(&format!("rdsquashfs -x /etc/i18-xattrs '{sqfs}'")));
        let dir = ok(&tb.root(&format!("rdsquashfs -x /etc/i18-opaque '{sqfs}'")));
        assert!(file.contains("user.i18"), "{sqfs}: the image's own user.* xattr was lost: {file:?}");
        for (what, xattrs) in [("file", &file), ("dir", &dir)] {
            for bad in ["overlay", "selinux", "trusted."] {
                assert!(!xattrs.contains(bad), "{sqfs}: {what} kept {bad}: {xattrs:?}");
            }
        }
    }
    // Not shown yet: that a writable `shoal run` (an overlay with
    // `userxattr`) treats the directory the layer marked opaque as an
    // ordinary one (the first try wrote into a root-owned image directory
    // as the user, which fails for another reason; issue 18's note).
}

#[test]
fn accepted_images_are_harmless_pulled_with_site_and_run_by_root_for_the_user() {
    let tb = pushed();
    let site = Site::new(tb);
    let uid = uid_of(tb);
    let secrets = host_secrets(tb);
    for (tag, check) in inside_checks(uid) {
        ok(&site.sh(&format!("shoal pull -q --site {}", image(tag))));
        // Root's run for the user kernel-mounts the site image: a squashfs
        // Shoal's own writer made, never the registry's bytes.
        let out = ok(&site.sh(&format!(
            "cd / && shoal run --user {} {} -- /bin/sh -c '{}; cat /etc/passwd /etc/group'",
            tb.user,
            image(tag),
            check.replace('\'', "'\\''")
        )));
        assert!(out.contains(&format!("PASS {tag}")), "{tag}: {out}");
        assert_no_secret(&out, &secrets, tag);
    }
    // What was published is root's and read-only; no device node in it.
    let files = ok(&tb.root(&format!("find {} -name image.sqfs -printf '%u %m %p\\n'", site.store().display())));
    assert!(!files.trim().is_empty());
    for line in files.lines() {
        assert!(line.starts_with("root 444 "), "published image not root's and read-only: {line}");
        let path = line.split(' ').nth(2).unwrap();
        let list = ok(&tb.root(&format!("unsquashfs -lln '{path}'")));
        assert!(!list.lines().any(|l| l.starts_with('c') || l.starts_with('b')), "a device node in {path}:\n{list}");
    }
    assert_store_empty_work(&site.store());
}

fn assert_store_empty_work(store: &Path) {
    let work: Vec<String> = entries(&store.join("tmp")).into_iter().filter(|n| store.join("tmp").join(n).is_dir()).collect();
    assert!(work.is_empty(), "work dirs left: {work:?}");
}

/// After a job: no process of it, no container state, no FUSE server of
/// the user, no mount of it in the host's table.
fn assert_job_left_nothing(tb: &Testbed, job: &str, uid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = ok(&tb.root(&format!("ls /run/shoal/share 2>/dev/null | grep '^{job}\\.' || true")));
        let fuse = ok(&tb.root(&format!("pgrep -u {uid} -a squashfuse_ll || true")));
        let queued = ok(&tb.root(&format!("squeue -h -j {job} 2>/dev/null || true")));
        if state.trim().is_empty() && fuse.trim().is_empty() && queued.trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "job {job} left: state {state:?}, FUSE {fuse:?}, queue {queued:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn accepted_images_are_harmless_under_srun_image() {
    let tb = pushed();
    let uid = uid_of(tb);
    let secrets = host_secrets(tb);
    // srun's plugin reads the machine's config: the user's default store.
    for (tag, check) in inside_checks(uid) {
        if matches!(tag, "wide" | "deep" | "nonutf8") {
            continue; // nothing privileged differs for these
        }
        let out = ok(&tb.user(&format!(
            "'{bin}' pull -q {img} && srun -N1 --image={img} /bin/sh -c '{c}; cat /etc/passwd /etc/group; echo JOB=$SLURM_JOB_ID'",
            bin = tb.shoal().display(),
            img = image(tag),
            c = check.replace('\'', "'\\''")
        )));
        assert!(out.contains(&format!("PASS {tag}")), "{tag}: {out}");
        assert_no_secret(&out, &secrets, tag);
        let job = out.rsplit("JOB=").next().unwrap().trim().to_string();
        assert_job_left_nothing(tb, &job, uid);
    }
}

/// Squashfs files crafted to break the image server, given as a path.
fn crafted_squashfs(tb: &Testbed, dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let good = dir.join("good.sqfs");
    ok(&tb.user(&format!(
        "set -e; cd '{d}'; rm -rf root; mkdir -p root/bin root/etc; cp /bin/busybox root/bin/; ln -s busybox root/bin/sh; \
         for i in $(seq 1 200); do echo $i > root/etc/f$i; done; \
         mksquashfs root good.sqfs -quiet -no-progress -comp gzip -noappend >/dev/null",
        d = dir.display()
    )));
    let bytes = std::fs::read(&good).unwrap();
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (inodes, dirs) = (u64_at(64), u64_at(72));
    let mut cases: Vec<(&'static str, Vec<u8>)> = Vec::new();
    cases.push(("truncated", bytes[..bytes.len() / 2].to_vec()));
    let mut garbage_tables = bytes.clone();
    garbage_tables[inodes..dirs.min(inodes + 256)].iter_mut().for_each(|b| *b = 0xff);
    cases.push(("garbage-inodes", garbage_tables));
    let mut garbage_dirs = bytes.clone();
    let end = (dirs + 256).min(garbage_dirs.len());
    garbage_dirs[dirs..end].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 131 % 251) as u8);
    cases.push(("garbage-dirs", garbage_dirs));
    let mut huge_counts = bytes.clone();
    huge_counts[4..8].copy_from_slice(&u32::MAX.to_le_bytes()); // inode count
    huge_counts[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // block size
    cases.push(("huge-fields", huge_counts));
    let mut not_squashfs = vec![0u8; 4096];
    not_squashfs[..4].copy_from_slice(b"hsqs");
    cases.push(("zero-tables", not_squashfs));
    cases
        .into_iter()
        .map(|(name, b)| {
            let p = dir.join(format!("{name}.sqfs"));
            std::fs::write(&p, b).unwrap();
            ok(&tb.root(&format!("chown {} '{}'", tb.user, p.display())));
            (name, p)
        })
        .collect()
}

#[test]
fn crafted_squashfs_files_fail_cleanly_as_a_path() {
    let tb = pushed();
    let uid = uid_of(tb);
    let dir = tb.user_tempdir("hostile-sqfs");
    for (name, path) in crafted_squashfs(tb, &dir) {
        for how in ["run", "srun"] {
            let cmd = match how {
                "run" => format!("timeout 60 '{}' run '{}' -- /bin/sh -c 'ls /etc | wc -l'", tb.shoal().display(), path.display()),
                _ => format!("timeout 60 srun -N1 --image='{}' /bin/sh -c 'ls /etc | wc -l'", path.display()),
            };
            let out = tb.user(&format!("cd '{}' && {cmd}", dir.display()));
            let code = out.status.code();
            assert_ne!(code, Some(124), "{name} ({how}): hung: {}", String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                // A damaged table the command did not touch may still run;
                // then it must have seen the image, not the host.
                let n: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
                assert!(n <= 201, "{name} ({how}): saw {n} entries in /etc");
            } else {
                // Shoal's refusal, or what the broken image makes of the
                // command (`/bin/sh: No such file`): an error, never a panic.
                let e = String::from_utf8_lossy(&out.stderr);
                assert!(!e.trim().is_empty() && !e.contains("panicked"), "{name} ({how}): unclear error: {e}");
            }
            // Served by the user's own FUSE server (never kernel-mounted),
            // and nothing left running or mounted.
            let loops = ok(&tb.root(&format!("cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -F '{}' || true", dir.display())));
            assert!(loops.trim().is_empty(), "{name} ({how}): kernel loop device on a user's squashfs: {loops}");
            assert_no_server_left(tb, uid, &format!("{name} ({how})"));
        }
    }
}

#[test]
fn a_fifo_or_device_as_the_image_path_is_refused_without_a_stall() {
    // Regression (issue 18): a FIFO given as the image path stalled its
    // reader for ever: `srun` (checking the file at submission), `shoal
    // run`, and, through a pin naming it, root's prolog and slurmstepd.
    let tb = pushed();
    let dir = tb.user_tempdir("hostile-fifo");
    let fifo = dir.join("img.sqfs");
    ok(&tb.user(&format!("rm -f '{f}' && mkfifo '{f}'", f = fifo.display())));
    let tmo = |cmd: String| format!("cd '{}' && timeout 60 {cmd}", dir.display());
    let refused = |out: std::process::Output, what: &str, says: &str| {
        assert_ne!(out.status.code(), Some(124), "{what}: hung");
        let e = fails(&out);
        assert!(e.contains(says) && e.contains("not an image file"), "{what}: {e}");
    };
    for (path, says) in [(fifo.display().to_string(), "a FIFO"), ("/dev/zero".to_string(), "a device")] {
        refused(tb.user(&tmo(format!("'{}' run '{path}' -- /bin/true", tb.shoal().display()))), "shoal run", says);
        refused(tb.user(&tmo(format!("srun -N1 --image='{path}' /bin/true"))), "srun --image", says);
    }
    // A pin the job forges naming the FIFO (srun reuses a pin whose
    // `requested` matches --image): the prolog and slurmstepd refuse it.
    let pin = serde_json::json!({
        "requested": "docker.io/library/forged:latest", "digest": format!("sha256:{}", "ab".repeat(32)), "scope": "user",
        "squashfs": fifo, "sha256": "ab".repeat(32), "size": 4096,
    });
    let out = tb.user(&tmo(format!("env SHOAL_IMAGE_PIN='{pin}' srun -N1 -w n1 --image=forged /bin/true")));
    refused(out, "a forged pin", "a FIFO");
    // Nothing of it in the node cache.
    let left = ok(&tb.root("ls /var/cache/shoal/n1/tmp /var/cache/shoal/n1/images | grep abab || true"));
    assert!(left.trim().is_empty(), "{left}");
}
