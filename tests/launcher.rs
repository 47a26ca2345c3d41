//! The launcher driven for real: `shoal run` and `shoal doctor` with user and
//! mount namespaces, squashfuse_ll and kernel loop mounts, as the
//! unprivileged user and as root acting for that user (as slurmstepd does).
//!
//! After every run the tests check that nothing is left: no squashfuse_ll
//! serving the image, no loop device on it, no container mount in the
//! host's mountinfo.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{fails, ok, repo_root, testbed, Testbed};

const FIXTURES: &str = "/var/lib/shoal-testbed/launcher";

/// Builds the squashfs fixtures once and writes a config whose site store
/// is a root-owned directory of them.
fn fixtures() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let tb = testbed();
        let script = repo_root().join("tests/testbed/launcher-fixtures.sh");
        ok(&tb.root(&format!(
            "bash {} {FIXTURES} && mkdir -p {FIXTURES}/site && chmod 755 {FIXTURES}/site && \
             printf '[store]\\nsite_dir = \"{FIXTURES}/site\"\\n' > {FIXTURES}/shoal.toml",
            script.display()
        )));
        PathBuf::from(FIXTURES)
    })
}

fn shoal(tb: &Testbed) -> String {
    format!("{} --config {}/shoal.toml", tb.shoal().display(), fixtures().display())
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh copy of the busybox image owned by the user, in a fresh
/// directory of theirs; each test has its own file so the leftover checks
/// see only its own runs.
fn user_image(tb: &Testbed, name: &str) -> (PathBuf, PathBuf) {
    let dir = tb.user_tempdir(name);
    let img = dir.join("busybox.sqfs");
    ok(&tb.root(&format!(
        "install -o {u} -g {u} -m 0644 {}/busybox.sqfs {}",
        fixtures().display(),
        img.display(),
        u = tb.user
    )));
    (dir, img)
}

/// A fresh root-owned copy in the site store (trusted for kernel mounts).
fn site_image(name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let img = fixtures().join(format!("site/{name}-{}-{n}.sqfs", std::process::id()));
    std::fs::copy(fixtures().join("busybox.sqfs"), &img).unwrap();
    img
}

/// FUSE servers (not zombies) serving `image`: `shoal run`'s built-in
/// server (`shoal-fuse`) or an exec'd `squashfuse_ll`, each holding the
/// image open.
fn fuse_servers(image: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let server = stat.contains("(squashfuse_ll)") || stat.contains("(shoal-fuse)");
        if !server || stat.contains(") Z ") {
            continue;
        }
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
        if fds.into_iter().any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(image)) {
            out.push(pid);
        }
    }
    out
}

/// Loop devices backed by `image`.
fn loops_on(image: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let f = e.path().join("loop/backing_file");
        if std::fs::read_to_string(&f).map(|s| s.trim() == image.to_str().unwrap()).unwrap_or(false) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Waits (bounded) until no FUSE server or loop device is left for `image`
/// and checks the host's mount table never saw a container mount.
#[track_caller]
fn assert_clean(image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (f, l) = (fuse_servers(image), loops_on(image));
        if f.is_empty() && l.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left over for {}: fuse servers {f:?}, loop devices {l:?}", image.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mi.lines() {
        assert!(!line.contains(image.to_str().unwrap()), "host mountinfo has {line}");
        assert!(!line.contains(" - overlay shoal "), "host mountinfo has a container root: {line}");
    }
}

fn user_run(tb: &Testbed, dir: &Path, args: &str) -> std::process::Output {
    tb.user(&format!("cd {} && {} run {args}", dir.display(), shoal(tb)))
}

#[test]
fn image_files_are_visible_and_id_inside_equals_id_outside() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "visible");
    let outside = ok(&tb.user("id"));
    let out = ok(&user_run(tb, &dir, "./busybox.sqfs -- sh -c 'cat /etc/shoal-test-image; id; pwd'"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "shoal launcher test image");
    assert_eq!(lines[1], outside.trim(), "id differs inside");
    assert_eq!(lines[2], dir.to_str().unwrap(), "cwd not kept");
    assert_clean(&img);

    // Root acting for the user (privileged mode), same image file.
    let out = ok(&tb.root(&format!(
        "cd {} && {} run --user {} ./busybox.sqfs -- sh -c 'cat /etc/shoal-test-image; id'",
        dir.display(),
        shoal(tb),
        tb.user
    )));
    assert!(out.contains("shoal launcher test image"), "{out}");
    assert!(out.contains(outside.trim()), "as root for the user: {out}");
    assert_clean(&img);
}

/// What a recursive long listing with inode numbers shows of the image
/// (`bin` and `usr`, where no mount of the container lies), owners left
/// out (the user namespace shows the image's root as nobody), `total`
/// lines too (block counts), and directories' inode numbers (the overlay
/// root numbers its directories itself).
fn listing(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with("total"))
        .map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 5 && f[1].starts_with(['-', 'd', 'l']) {
                f.drain(3..5);
                if f[1].starts_with('d') {
                    f[0] = "dir";
                }
            }
            f.join(" ")
        })
        .collect()
}

/// Shoal's image server answers directory listings with every entry's
/// attributes (READDIRPLUS), which then answer the stats that follow: a
/// long listing through it must be what the kernel's own squashfs driver
/// shows of the same file, name for name, inode, mode, links, size and
/// time.
#[test]
fn a_long_listing_through_the_image_server_is_the_kernels() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "listing");
    let list = "busybox ls -lnAiR --full-time bin usr";
    let mnt = dir.join("kernel");
    let host = tb.root(&format!(
        "mkdir {m} && mount -t squashfs -o ro,loop {i} {m} && (cd {m} && {list}); rc=$?; umount {m}; rmdir {m}; exit $rc",
        m = mnt.display(),
        i = img.display()
    ));
    let host = ok(&host);
    let inside = ok(&user_run(tb, &dir, &format!("./busybox.sqfs -- sh -c 'cd / && {list}'")));
    let (host, inside) = (listing(&host), listing(&inside));
    assert!(host.len() > 50, "the kernel's listing is short: {host:?}");
    assert_eq!(inside, host, "the listing through Shoal's image server differs from the kernel's");
    assert_clean(&img);
}

/// `shoal run` keeps what a command read of an image (its start profile,
/// which the next start of the same command reads ahead) in the user's
/// cache, the user's own, written when the container ends; a profile that
/// is garbage, or names blocks of nothing, changes no byte the command
/// reads.
#[test]
fn a_start_profile_is_kept_for_the_next_start_and_a_bad_one_changes_nothing() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "profile");
    let cache = dir.join("cache");
    let starts = cache.join("shoal/starts");
    let run = || ok(&tb.user(&format!("cd {} && XDG_CACHE_HOME={} {} run ./busybox.sqfs -- md5sum /bin/busybox", dir.display(), cache.display(), shoal(tb))));
    let profiles = || -> Vec<PathBuf> { std::fs::read_dir(&starts).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default() };
    let first = run();
    assert_clean(&img);
    let deadline = Instant::now() + Duration::from_secs(10);
    while profiles().is_empty() {
        assert!(Instant::now() < deadline, "no start profile in {}", starts.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = profiles();
    assert_eq!(kept.len(), 1, "one profile, no temporary file: {kept:?}");
    let bytes = std::fs::read(&kept[0]).unwrap();
    assert!(bytes.starts_with(b"SHOALSP1") && bytes.len() >= 8 + 12 * 10, "{} bytes", bytes.len());
    let meta = std::fs::metadata(&kept[0]).unwrap();
    assert_eq!(meta.uid(), std::fs::metadata(&dir).unwrap().uid(), "the profile is the user's");
    assert_eq!(run(), first, "a start with the profile read ahead");
    assert_clean(&img);
    // Garbage, then blocks of inodes that are not there.
    let mut forged = b"SHOALSP1".to_vec();
    for i in 0..500u64 {
        forged.extend_from_slice(&(i * 7919 << 16).to_le_bytes());
        forged.extend_from_slice(&(i as u32).to_le_bytes());
    }
    for junk in [b"not a profile at all".to_vec(), forged] {
        std::fs::write(&kept[0], &junk).unwrap();
        assert_eq!(run(), first, "a start with a bad profile");
        assert_clean(&img);
    }
}

#[test]
fn files_created_in_bound_directories_belong_to_the_user() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "owner");
    ok(&user_run(tb, &dir, "./busybox.sqfs -- sh -c 'echo x > made-inside; mkdir d-inside'"));
    ok(&tb.root(&format!(
        "cd {} && {} run --user {} ./busybox.sqfs -- touch made-by-root-run",
        dir.display(),
        shoal(tb),
        tb.user
    )));
    let out = ok(&tb.root(&format!("stat -c '%U:%G %n' {0}/made-inside {0}/d-inside {0}/made-by-root-run", dir.display())));
    for line in out.lines() {
        assert!(line.starts_with(&format!("{0}:{0} ", tb.user)), "{line}");
    }
    assert_clean(&img);
}

#[test]
fn setuid_binary_in_the_image_gains_nothing() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "suid");
    let uid = ok(&tb.user("id -u")).trim().to_string();
    let cmd = "./busybox.sqfs -- sh -c 'ls -l /usr/bin/busybox-suid; /usr/bin/busybox-suid id -u; /usr/bin/busybox-suid id -u -r; grep -E \"^(NoNewPrivs|CapEff|CapBnd)\" /proc/self/status'";
    for out in [
        ok(&user_run(tb, &dir, cmd)),
        ok(&tb.root(&format!("cd {} && {} run --user {} {cmd}", dir.display(), shoal(tb), tb.user))),
    ] {
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("-rws"), "fixture lost its setuid bit: {out}");
        assert_eq!(lines[1], uid, "setuid raised the euid: {out}");
        assert_eq!(lines[2], uid, "{out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{out}");
        assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
        assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    }
    assert_clean(&img);
}

#[test]
fn exit_codes_and_signals_pass_through() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "signals");
    let s = shoal(tb);
    let script = format!(
        r#"cd {dir}
set -m   # job control: background jobs get SIGINT like foreground ones
{s} run ./busybox.sqfs -- sh -c 'exit 7'; echo "exit=$?"
{s} run ./busybox.sqfs -- sh -c 'kill -TERM $$'; echo "self-term=$?"
{s} run ./busybox.sqfs -- no-such-command; echo "notfound=$?"
for sig in TERM INT; do
  rm -f ready
  {s} run ./busybox.sqfs -- sh -c "trap 'echo trapped-$sig; exit 42' $sig; touch ready; while :; do sleep 0.05; done" & p=$!
  until [ -e ready ]; do sleep 0.02; done
  kill -$sig $p; wait $p; echo "$sig=$?"
done
rm -f ready
{s} run ./busybox.sqfs -- sh -c 'touch ready; exec sleep 100' & p=$!
until [ -e ready ]; do sleep 0.02; done
kill -KILL $p; wait $p; echo "KILL=$?"
"#,
        dir = dir.display()
    );
    let out = ok(&tb.user(&script));
    for want in ["exit=7", "self-term=143", "notfound=127", "trapped-TERM", "TERM=42", "trapped-INT", "INT=42", "KILL=137"] {
        assert!(out.lines().any(|l| l == want), "missing {want} in:\n{out}");
    }
    assert_clean(&img);
}

#[test]
fn stdin_and_tty_pass_through() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "tty");
    let out = ok(&tb.user(&format!(
        "cd {} && echo from-stdin | {s} run ./busybox.sqfs -- cat && script -qec '{s} run ./busybox.sqfs -- tty' /dev/null",
        dir.display(),
        s = shoal(tb)
    )));
    assert!(out.contains("from-stdin"), "{out}");
    // Unprivileged, /dev/pts is the container's own devpts: the caller's
    // terminal is bound at /dev/console, and ttyname() finds it there.
    assert!(out.contains("/dev/console"), "no tty inside: {out}");
    assert_clean(&img);
}

#[test]
fn mounts_env_and_cwd_follow_the_request_and_the_policy() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "mounts");
    ok(&tb.user(&format!("cd {} && mkdir -p data && echo payload > data/f && printf 'FROM_FILE=1\\n# c\\n' > e.env", dir.display())));
    let d = dir.display();
    let out = ok(&tb.user(&format!(
        "cd {d} && LD_PRELOAD=/nonexistent.so {s} run --env A=b --env-file e.env \
         --mount {d}/data:/data:ro --volume '{d}/data:/new/deep/target;{d}/data:/vol2' ./busybox.sqfs -- \
         sh -c 'cat /data/f /new/deep/target/f /vol2/f; echo A=$A FROM_FILE=$FROM_FILE LD=${{LD_PRELOAD:-unset}} PATH=$PATH; \
         touch /data/x 2>/dev/null && echo data-writable || echo data-ro; touch /etc/x 2>/dev/null && echo root-writable || echo root-ro; \
         (echo x >> /etc/passwd) 2>/dev/null && echo passwd-writable || echo passwd-ro; \
         touch /tmp/x && echo tmp-writable'",
        s = shoal(tb)
    )));
    assert_eq!(out.matches("payload").count(), 3, "{out}");
    assert!(out.contains("A=b FROM_FILE=1 LD=unset PATH=/usr/local/sbin:"), "{out}");
    for want in ["data-ro", "root-ro", "passwd-ro", "tmp-writable"] {
        assert!(out.lines().any(|l| l == want), "missing {want}: {out}");
    }
    // --writable: the root takes writes, lost at exit; /etc/passwd can be
    // replaced as useradd does (a new file renamed over it), and still
    // names the user.
    let out = ok(&user_run(
        tb,
        &dir,
        "--writable ./busybox.sqfs -- sh -c 'mkdir -p /opt/new && echo ok > /tmp/../opt/new/f && cat /opt/new/f; \
         grep -c \"^$(id -un):\" /etc/passwd; cp /etc/passwd /etc/passwd+ && echo added:x:4242:4242::/:/bin/sh >> /etc/passwd+ && \
         mv /etc/passwd+ /etc/passwd && grep ^added: /etc/passwd | cut -d: -f1'",
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["ok", "1", "added"], "{out}");
    // A cwd that is not visible inside falls back to the image's workdir (/).
    let out = ok(&tb.user(&format!("cd /usr/share && {} run {}/busybox.sqfs -- pwd", shoal(tb), d)));
    assert_eq!(out.trim(), "/");
    assert_clean(&img);
}

/// Images where /etc and /home are symlinks (/etc -> usr/etc as in some
/// minimal distributions, /home -> var/home as in Fedora's image-based
/// ones): the container keeps the links and the image's files behind them,
/// and what Shoal adds (the user's entries, /etc/hosts, the home bind)
/// lands behind them too.
#[test]
fn an_image_whose_etc_and_home_are_symlinks_keeps_them() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "etclink");
    ok(&tb.user(&format!(
        "set -e; cd {}; unsquashfs -q -d tree busybox.sqfs >/dev/null; mkdir -p tree/usr tree/var\n\
         mv tree/etc tree/usr/etc && ln -s usr/etc tree/etc\n\
         rmdir tree/home && mkdir -p tree/var/home && ln -s var/home tree/home\n\
         mkdir -p tree/srv && ln -s srv tree/opt && mkdir -p data && echo payload > data/f\n\
         mksquashfs tree links.sqfs -noappend -no-progress >/dev/null",
        dir.display()
    )));
    let probe = "readlink /etc; readlink /home; cat /etc/shoal-test-image; id -un; grep -c . /etc/hosts >/dev/null && echo hosts; \
                 cd && pwd && test -d tests && echo home-bound";
    for (who, out) in [
        ("user", user_run(tb, &dir, &format!("./links.sqfs -- sh -c '{probe}'"))),
        ("root for the user", tb.root(&format!("cd {} && {} run --user {} ./links.sqfs -- sh -c '{probe}'", dir.display(), shoal(tb), tb.user))),
        ("writable", user_run(tb, &dir, &format!("--writable ./links.sqfs -- sh -c '{probe}'"))),
    ] {
        let out = ok(&out);
        let home = tb.home.display().to_string();
        // The home bind is reached through the image's /home link.
        let want = ["usr/etc", "var/home", "shoal launcher test image", tb.user.as_str(), "hosts", home.as_str(), "home-bound"];
        assert_eq!(out.lines().collect::<Vec<_>>(), want, "{who}:\n{out}");
    }
    // Targets on both sides of a link (/opt -> srv): both land in /srv.
    let d = dir.display();
    let out = ok(&user_run(tb, &dir, &format!("--mount {d}/data:/opt/a --mount {d}/data:/srv/b ./links.sqfs -- sh -c 'readlink /opt; cat /opt/a/f /srv/b/f; ls /srv'")));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["srv", "payload", "payload", "a", "b"], "{out}");
    assert_clean(&img);
}

#[test]
fn policy_refusals_and_bad_input_get_one_line_with_the_fix() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "policy");
    for (args, says) in [
        ("--mount /tmp:/etc/x ./busybox.sqfs -- true", "refused by site policy: targets under /etc"),
        ("--volume '/tmp:/data;/tmp:/usr/local' ./busybox.sqfs -- true", "targets under /usr"),
        ("--mount /tmp:/proc ./busybox.sqfs -- true", "targets under /proc"),
        ("--mount /tmp:/data:perNodeCache ./busybox.sqfs -- true", "only `ro` and `rw`"),
        ("--mount /nonexistent:/data ./busybox.sqfs -- true", "mount source /nonexistent for /data is not accessible to alice"),
        ("--env 1A=b ./busybox.sqfs -- true", "invalid environment setting"),
        ("./missing.sqfs -- true", "missing.sqfs cannot be opened: No such file"),
        ("debian:12 -- true", "pull it first with `shoal pull docker.io/library/debian:12`"),
        ("/etc/passwd -- true", "not a usable squashfs file"),
        (&format!("{FIXTURES}/corrupt.sqfs -- true"), "corrupt"),
    ] {
        let err = fails(&user_run(tb, &dir, args));
        assert!(err.contains(says), "{args}: expected {says:?} in:\n{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args}: not one line:\n{err}");
    }
    // squashfuse_ll missing: a site config that points elsewhere.
    let cfg = dir.join("nosq.toml");
    ok(&tb.user(&format!("printf '[launcher]\\nsquashfuse = \"/nonexistent/squashfuse_ll\"\\n' > {}", cfg.display())));
    let err = fails(&tb.user(&format!(
        "cd {} && {} --config {} run ./busybox.sqfs -- true",
        dir.display(),
        tb.shoal().display(),
        cfg.display()
    )));
    assert!(err.contains("squashfuse_ll not found at /nonexistent/squashfuse_ll: install the `squashfuse` package"), "{err}");
    // A user may not run containers for someone else.
    let err = fails(&user_run(tb, &dir, "--user root ./busybox.sqfs -- true"));
    assert!(err.contains("only root may"), "{err}");
    assert_clean(&img);
}

#[test]
fn dry_run_prints_the_plan() {
    let tb = testbed();
    let (dir, _img) = user_image(tb, "dryrun");
    let out = ok(&user_run(tb, &dir, "--dry-run --mount /tmp:/data:ro --env X=1 ./busybox.sqfs -- /bin/echo hi"));
    for want in [
        "mode     unprivileged",
        "via FUSE as uid 1001 (Shoal's image server;",
        "/etc/hosts <- /etc/hosts (its contents, read-only) (host)",
        "/dev <- tmpfs mode=755 [rw,nosuid,nodev,noexec] (system)",
        "/dev/null <- bind /dev/null [rw] (system)",
        "/dev/pts <- devpts newinstance,ptmxmode=0666 [rw,nosuid,noexec] (system)",
        "/dev/shm <- tmpfs mode=1777 [rw,nosuid,nodev] (system)",
        "/dev/ptmx -> pts/ptmx",
        "/tmp <- tmpfs mode=1777 [rw,nosuid,nodev] (system)",
        "/data <- bind /tmp (opened as the user) [ro,nosuid,nodev,rec] (user)",
        "ids      uid=1001 gid=1001",
        "env      X=1",
        "argv     [\"/bin/echo\", \"hi\"]",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // As root for the user with a site-store image: a kernel mount.
    let site = site_image("dryrun");
    let out = ok(&tb.root(&format!("{} run --dry-run --user {} {} -- true", shoal(tb), tb.user, site.display())));
    assert!(out.contains("mode     privileged"), "{out}");
    assert!(out.contains("kernel squashfs on a read-only loop device"), "{out}");
    assert!(out.contains("(dropped from root before exec)"), "{out}");
    std::fs::remove_file(site).unwrap();
}

#[test]
fn dry_run_flags_are_the_flags_the_container_is_made_with() {
    // Both print from one lowering of the plan (container/lower.rs); this
    // checks the result on the kernel's side, for a user's run and for
    // root acting for the user (the plugin's privileged mode).
    let tb = testbed();
    let (dir, img) = user_image(tb, "dryflags");
    let args = "--mount /tmp:/data:ro ./busybox.sqfs -- cat /proc/self/mountinfo";
    let dry = ok(&user_run(tb, &dir, &format!("--dry-run {args}")));
    let mi = ok(&user_run(tb, &dir, args));
    support::dry_run::assert_matches_mountinfo(&dry, &mi);
    let root = |a: &str| tb.root(&format!("cd {} && {} run --user {} {a}", dir.display(), shoal(tb), tb.user));
    let dry = ok(&root(&format!("--dry-run {args}")));
    assert!(dry.contains("mode     privileged"), "{dry}");
    let mi = ok(&root(args));
    support::dry_run::assert_matches_mountinfo(&dry, &mi);
    assert_clean(&img);
}

#[test]
fn root_kernel_mounts_only_site_images_and_serves_user_images_as_the_user() {
    let tb = testbed();
    let s = shoal(tb);
    // Site image: loop device while it runs, none after.
    let site = site_image("kernel");
    let dir = tb.user_tempdir("kernel");
    let script = format!(
        "cd {d} && {{ {s} run --user {u} {img} -- sh -c 'touch {d}/ready; exec sleep 100' >/dev/null 2>&1 & echo $! > pid; }}; \
         until [ -e ready ]; do sleep 0.02; done; \
         for f in /sys/block/loop*/loop/backing_file; do grep -qx {img} $f && echo loop-in-use; done; \
         kill $(cat pid); true",
        d = dir.display(),
        u = tb.user,
        img = site.display()
    );
    let out = ok(&tb.root(&script));
    assert!(out.contains("loop-in-use"), "no loop device for the site image:\n{out}");
    assert_clean(&site);
    std::fs::remove_file(&site).unwrap();

    // User image, root acting for the user: squashfuse_ll runs as the user.
    let (dir, img) = user_image(tb, "fuse-as-user");
    ok(&tb.root(&format!(
        "cd {d} && {{ {s} run --user {u} ./busybox.sqfs -- sh -c 'touch {d}/ready; exec sleep 100' >/dev/null 2>&1 & echo $! > pid; }}; \
         until [ -e ready ]; do sleep 0.02; done",
        d = dir.display(),
        u = tb.user
    )));
    let servers = fuse_servers(&img);
    assert_eq!(servers.len(), 1, "expected one squashfuse_ll for {}: {servers:?}", img.display());
    let status = std::fs::read_to_string(format!("/proc/{}/status", servers[0])).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let alice_uid = ok(&tb.user("id -u")).trim().to_string();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == alice_uid), "server not running as the user: {uid_line}");
    assert!(loops_on(&img).is_empty(), "a user image met the kernel's squashfs");
    ok(&tb.root(&format!("kill $(cat {}/pid)", dir.display())));
    assert_clean(&img);

    // The site may opt in to kernel mounts of user images.
    let cfg = dir.join("kernel-ok.toml");
    ok(&tb.root(&format!("printf '[launcher]\\nallow_kernel_mount_of_user_images = true\\n' > {}", cfg.display())));
    let out = ok(&tb.root(&format!("cd {} && {} --config {} run --dry-run --user {} ./busybox.sqfs -- true", dir.display(), tb.shoal().display(), cfg.display(), tb.user)));
    assert!(out.contains("kernel squashfs"), "{out}");
}

#[test]
fn fuse_server_ignores_stray_signals_and_a_killed_server_fails_cleanly() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "fusekill");
    let d = dir.display();
    let s = shoal(tb);
    // Start a container that asks its image for a new name every 50 ms (a
    // lookup the kernel cannot answer from its caches; the launcher
    // holding one more descriptor of the caller's), then signal the server.
    let start = format!(
        "cd {d} && rm -f ready out && {{ {s} run ./busybox.sqfs -- sh -c 'touch ready; i=0; while i=$((i+1)); ls /probe-$i 2>&1 | grep -q \"No such file\"; do sleep 0.05; done; echo lookup-failed > out' >/dev/null 2>&1 9>caller-fd & }}; \
         until [ -e ready ]; do sleep 0.02; done"
    );
    ok(&tb.user(&start));
    let servers = fuse_servers(&img);
    assert_eq!(servers.len(), 1, "{servers:?}");
    // It holds stdio, /dev/fuse and the image, none of the caller's others.
    for fd in std::fs::read_dir(format!("/proc/{}/fd", servers[0])).unwrap().flatten() {
        let n: u32 = fd.file_name().to_string_lossy().parse().unwrap();
        let target = std::fs::read_link(fd.path()).unwrap();
        // /dev/fuse (10:229), opened in another mount namespace, so its
        // link text need not read /dev/fuse.
        let dev_fuse = std::fs::metadata(fd.path()).map(|m| m.file_type().is_char_device() && m.rdev() == (10 << 8 | 229)).unwrap_or(false);
        assert!(n <= 2 || dev_fuse || target == img, "server holds fd {n} -> {}", target.display());
    }
    // SIGTERM/SIGINT/SIGHUP (a terminal hangup, a scancel) do not end it.
    ok(&tb.root(&format!("kill -TERM {0}; kill -INT {0}; kill -HUP {0}", servers[0])));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fuse_servers(&img), servers, "the FUSE server died of a stray signal");
    // SIGKILL: the container sees I/O errors, exits, and nothing is left.
    ok(&tb.root(&format!("kill -KILL {}", servers[0])));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("out").exists() {
        assert!(Instant::now() < deadline, "container kept running on a dead image");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_clean(&img);
}

/// `shoal run` forks its image server before it reads its config or opens
/// the image; a launch that fails before handing it the image leaves no
/// server behind.
#[test]
fn a_failed_launch_leaves_no_image_server() {
    let tb = testbed();
    let dir = tb.user_tempdir("early-server");
    let missing = dir.join("missing.sqfs");
    let out = tb.user(&format!("{} run {} -- true", shoal(tb), missing.display()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.sqfs cannot be opened: No such file"), "{out:?}");
    // The early server inherited the launcher's command line: find it by
    // the image named there (a path unique to this test).
    let early = || -> Vec<u32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if stat.contains("(shoal-fuse)") && !stat.contains(") Z ") && String::from_utf8_lossy(&cmdline).contains(missing.to_str().unwrap()) {
                pids.push(pid);
            }
        }
        pids
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !early().is_empty() {
        assert!(Instant::now() < deadline, "early image server left over: {:?}", early());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!missing.exists());
}

#[test]
fn many_concurrent_runs() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "concurrent");
    let out = ok(&tb.user(&format!(
        "cd {} && for i in $(seq 1 16); do {} run ./busybox.sqfs -- sh -c \"cat /etc/shoal-test-image > out.$i\" & done; wait; cat out.* | sort | uniq -c",
        dir.display(),
        shoal(tb)
    )));
    assert_eq!(out.trim(), "16 shoal launcher test image", "{out}");
    assert_clean(&img);
}

/// Four peers share one container; the first is SIGKILLed while it holds
/// the lock with its container built but not yet registered. The other
/// three must neither hang nor run in different containers.
fn shared_container_survives_a_killed_peer(as_root: bool) {
    let tb = testbed();
    let (dir, img) = user_image(tb, if as_root { "share-root" } else { "share-user" });
    let user_flag = if as_root { format!("--user {}", tb.user) } else { String::new() };
    let key = format!("{}.0.n1", std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed) as u32);
    let run = format!("{} run {user_flag} --share-key {key} --share-peers 4 ./busybox.sqfs --", shoal(tb));
    let script = format!(
        r#"cd {d}
SHOAL_TEST_HOLD_SETUP={d}/held {run} sh -c 'readlink /proc/self/ns/mnt > out0' & p0=$!
until [ -e held ]; do sleep 0.02; done
for i in 1 2 3; do {run} sh -c "readlink /proc/self/ns/mnt > out$i; sleep 0.5" & done
sleep 0.3   # the others are now queued on the lock (not required for correctness)
kill -KILL $p0; wait $p0; echo "p0=$?"
wait
cat out1 out2 out3 | sort | uniq -c | wc -l
ls out0 2>/dev/null || echo no-out0
"#,
        d = dir.display()
    );
    let out = if as_root { ok(&tb.root(&script)) } else { ok(&tb.user(&script)) };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["p0=137", "1", "no-out0"], "{out}");
    assert_clean(&img);
    // The step-exit teardown would remove the killed peer's state; the
    // container itself is gone already.
    let base = if as_root { "/run/shoal/share".to_string() } else { format!("/tmp/shoal-{}/share", ok(&tb.user("id -u")).trim()) };
    ok(&tb.root(&format!("rm -rf {base}/{key}")));
}

#[test]
fn shared_container_with_four_peers_one_killed_mid_setup_as_user() {
    shared_container_survives_a_killed_peer(false);
}

#[test]
fn shared_container_with_four_peers_one_killed_mid_setup_as_root() {
    shared_container_survives_a_killed_peer(true);
}

#[test]
fn shared_container_peers_all_join_one_namespace() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "share-all");
    let key = format!("{}.1.n2", std::process::id());
    let out = ok(&tb.user(&format!(
        "cd {} && for i in 1 2 3 4; do {} run --share-key {key} --share-peers 4 ./busybox.sqfs -- sh -c 'echo $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/user); sleep 0.3' & done; wait",
        dir.display(),
        shoal(tb)
    )));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines.iter().all(|l| *l == lines[0]), "peers in different namespaces:\n{out}");
    // The fourth peer removed the state: nothing left in the runtime dir.
    let uid = ok(&tb.user("id -u")).trim().to_string();
    assert!(!Path::new(&format!("/tmp/shoal-{uid}/share/{key}")).exists());
    assert_clean(&img);
}

/// A shared container's peers are served by one image server: Shoal's own
/// by default, squashfuse_ll (with its pool of threads) only where the
/// site asks for it.
#[test]
fn a_shared_container_is_served_by_shoals_server_unless_the_site_asks_for_squashfuse() {
    let tb = testbed();
    for (site, server) in [("", "(shoal-fuse)"), ("[launcher]\nimage_server = \"squashfuse\"\n", "(squashfuse_ll)")] {
        let (dir, img) = user_image(tb, "share-server");
        let cfg = dir.join("site.toml");
        std::fs::write(&cfg, site).unwrap();
        let key = format!("{}.srv.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let script = format!(
            "cd {} && for i in 1 2; do {} --config {} run --share-key {key} --share-peers 2 ./busybox.sqfs -- sleep 1.5 & done; wait",
            dir.display(),
            tb.shoal().display(),
            cfg.display()
        );
        let peers = std::thread::spawn(move || tb.user(&script));
        let deadline = Instant::now() + Duration::from_secs(10);
        let servers = loop {
            let s = fuse_servers(&img);
            if !s.is_empty() || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let names: Vec<String> = servers
            .iter()
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().split(' ').nth(1).unwrap_or("").to_string())
            .collect();
        ok(&peers.join().unwrap());
        assert_eq!(names, [server], "site config {site:?}: the shared container's servers");
        assert_clean(&img);
    }
}

#[test]
fn doctor_prints_a_table_with_fixes() {
    let tb = testbed();
    let out = tb.user(&format!("{} doctor", shoal(tb)));
    let text = String::from_utf8_lossy(&out.stdout);
    for check in ["user namespaces", "/dev/fuse", "squashfuse_ll", "kernel squashfs", "loop devices", "overlay", "config", "site store"] {
        assert!(text.lines().any(|l| l.starts_with(check)), "doctor lacks {check}:\n{text}");
    }
    assert!(text.contains("user namespaces  ok"), "{text}");
    // A broken config is reported with its fix, and doctor fails.
    let dir = tb.user_tempdir("doctor");
    let bad = dir.join("bad.toml");
    ok(&tb.user(&format!("printf '[launcher]\\nsquashfuse = 3\\n' > {}", bad.display())));
    let out = tb.user(&format!("{} --config {} doctor", tb.shoal().display(), bad.display()));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config           FAIL"), "{text}");
    assert!(text.contains("fix: fix the file"), "{text}");
}

#[test]
fn missing_or_closed_dev_fuse_is_reported_with_the_fix() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "devfuse");
    // A private mount namespace whose /dev has no fuse node, then one whose
    // fuse node is root-only: what a fresh node looks like.
    for (setup, says) in [
        ("", "/dev/fuse is missing on this node: load the kernel module"),
        ("mknod $d/fuse c 10 229 && chmod 600 $d/fuse &&", "/dev/fuse is not accessible to you"),
    ] {
        let out = tb.root(&format!(
            "unshare -m sh -c 'd=$(mktemp -d) && mount -t tmpfs t $d && cp -a /dev/null /dev/zero /dev/urandom $d/ && {setup} \
             mount --bind $d /dev && cd {dir} && runuser -u {u} -- env HOME={home} {s} run ./busybox.sqfs -- true; \
             runuser -u {u} -- {s} doctor'",
            dir = dir.display(),
            u = tb.user,
            home = tb.home.display(),
            s = shoal(tb)
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(err.contains(says), "expected {says:?} in:\n{err}");
        assert!(table.contains("/dev/fuse        FAIL"), "doctor did not flag /dev/fuse:\n{table}");
        assert!(table.contains("fix: modprobe fuse, and make /dev/fuse mode 0666"), "{table}");
    }
    assert_clean(&img);
}

#[test]
fn user_namespaces_disabled_is_reported_with_the_fix() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "nouserns");
    let uid = ok(&tb.user("id -u")).trim().to_string();
    let gid = ok(&tb.user("id -g")).trim().to_string();
    // user.max_user_namespaces is per user namespace: set it to 0 in a
    // namespace of root's (all ids mapped to themselves) and run as the user
    // there, as on a node where the admin disabled them.
    let as_user = format!("setpriv --reuid={uid} --regid={gid} --clear-groups env HOME={}", tb.home.display());
    let inner = dir.join("inner.sh");
    let go = dir.join("go");
    std::fs::write(
        &inner,
        format!(
            "echo 0 > /proc/sys/user/max_user_namespaces\ncd {d}\n{as_user} {s} run ./busybox.sqfs -- true\n{as_user} {s} doctor\n",
            d = dir.display(),
            s = shoal(tb)
        ),
    )
    .unwrap();
    let out = tb.root(&format!(
        "unshare --user sh -c 'while [ ! -e {go} ]; do sleep 0.01; done; exec sh {inner}' & p=$!
         while [ \"$(readlink /proc/$p/ns/user)\" = \"$(readlink /proc/self/ns/user)\" ]; do sleep 0.01; done
         echo '0 0 65536' > /proc/$p/uid_map && echo '0 0 65536' > /proc/$p/gid_map && touch {go}; wait $p",
        go = go.display(),
        inner = inner.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("user namespaces are disabled on this node") && err.contains("user.max_user_namespaces=0"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
    assert!(table.contains("user namespaces  FAIL"), "{table}");
    assert!(table.contains("fix: enable them: sysctl user.max_user_namespaces="), "{table}");
    assert_clean(&img);
}

#[test]
fn root_opens_user_mount_sources_with_the_users_credentials() {
    let tb = testbed();
    let (dir, img) = user_image(tb, "asuser");
    // A directory only root can reach (inside a 0700 one), and the user's
    // symlink to it.
    let secret = fixtures().join("secret/sub");
    ok(&tb.root(&format!("mkdir -p {0} && chmod 700 {0}/.. && echo s > {0}/f", secret.display())));
    ok(&tb.user(&format!("ln -sfn {} {}/link", secret.display(), dir.display())));
    for src in [secret.display().to_string(), format!("{}/link", dir.display())] {
        let err = fails(&tb.root(&format!(
            "cd {} && {} run --user {} --mount {src}:/data ./busybox.sqfs -- cat /data/f",
            dir.display(),
            shoal(tb),
            tb.user
        )));
        assert!(err.contains(&format!("mount source {src} for /data is not accessible to {}", tb.user)), "{src}: {err}");
    }
    // Root running for root may use it.
    let out = ok(&tb.root(&format!("cd {} && {} run --mount {}:/data ./busybox.sqfs -- cat /data/f", dir.display(), shoal(tb), secret.display())));
    assert_eq!(out.trim(), "s");
    assert_clean(&img);
}

#[test]
fn a_store_reference_runs_with_the_images_own_settings() {
    let tb = testbed();
    let dir = tb.user_tempdir("run-ref");
    let img = "127.0.0.1:5443/shoal/busybox:v2";
    ok(&tb.user(&format!("SSL_CERT_FILE=/var/lib/shoal-testbed/tls/cert.pem {} pull -q {img}", tb.shoal().display())));
    let out = ok(&user_run(tb, &dir, &format!("{img} -- sh -c 'cat /etc/shoal-test-image; echo PATH=$PATH'")));
    assert!(out.contains("shoal test image: busybox v2"), "{out}");
    assert!(out.contains("PATH=/usr/local/bin:/usr/bin:/bin"), "the image's PATH was not applied:\n{out}");
    let err = fails(&user_run(tb, &dir, "127.0.0.1:5443/shoal/never-pulled:1 -- true"));
    assert!(err.contains("pull it first with `shoal pull 127.0.0.1:5443/shoal/never-pulled:1`"), "{err}");
}

/// Opens a new pty through /dev/ptmx and prints the follower's name.
const PTY_PROBE: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) || unlockpt(m)) { perror("ptmx"); return 1; }
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    if (s < 0) { perror(ptsname(m)); return 1; }
    printf("pty %s\n", ptsname(m));
    return 0;
}
"#;

#[test]
fn dev_holds_only_the_basic_nodes_and_new_ptys_work() {
    let tb = testbed();
    let (dir, _img) = user_image(tb, "dev");
    ok(&tb.user(&format!(
        "set -e; cd {}; unsquashfs -q -d tree busybox.sqfs >/dev/null\ncat > pty.c <<'EOF'\n{PTY_PROBE}EOF\n\
         gcc -static -o tree/bin/ptyprobe pty.c 2>/dev/null\nmksquashfs tree dev.sqfs -noappend -no-progress >/dev/null",
        dir.display()
    )));
    let probe = "ls /dev; ls -l /dev/ptmx; echo x > /dev/null; echo shm > /dev/shm/f && cat /dev/shm/f; ls /dev/fd/0 >/dev/null && echo fd; grep \" /dev \" /proc/self/mountinfo; ptyprobe";
    let expected = [
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero",
    ];
    let names = |out: &str| -> Vec<String> {
        let mut v: Vec<String> = out.lines().take_while(|l| !l.contains(' ')).map(String::from).collect();
        v.retain(|n| n != "mqueue"); // only where the host has one
        v
    };
    // Root for the user (the plugin's mode): root makes the ptmx node, so
    // new ptys work whatever the host's devpts ptmxmode.
    let out = ok(&tb.root(&format!("cd {} && {} run --user {} ./dev.sqfs -- sh -c '{probe}' </dev/null", dir.display(), shoal(tb), tb.user)));
    assert_eq!(names(&out), expected, "no other host device:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("crw-rw-rw-") && l.ends_with("/dev/ptmx")), "{out}");
    for want in ["shm", "fd"] {
        assert!(out.lines().any(|l| l == want), "{want}:\n{out}");
    }
    // (A directory of the container's scratch tmpfs, bound at /dev.)
    assert!(out.lines().any(|l| l.contains(" /dev rw,nosuid,noexec")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("pty /dev/pts/")), "{out}");
    // The user alone (user namespace): the same /dev, nodev too; ptmx is
    // the container's own devpts' (the host's is mode 000 on Debian), and
    // new ptys work there.
    let out = ok(&tb.user(&format!("cd {} && {} run ./dev.sqfs -- sh -c '{probe}; grep \" /dev/pts \" /proc/self/mountinfo' </dev/null", dir.display(), shoal(tb))));
    assert_eq!(names(&out), expected, "no other host device:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("/dev/ptmx -> pts/ptmx")), "{out}");
    assert!(out.lines().any(|l| l.contains(" /dev rw,nosuid,nodev,noexec")), "{out}");
    assert!(out.lines().any(|l| l.contains(" / /dev/pts rw,nosuid,noexec") && l.contains("ptmxmode=666")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("pty /dev/pts/")), "{out}");
}
