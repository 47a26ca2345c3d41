//! Shared by the integration tests: brings the real test bed up once (three
//! Slurm nodes, munge, the TLS registry, the unprivileged user; see
//! `tests/testbed/`), installs this build's plugin and `shoal` binary, and
//! runs commands as that user or as root.
//!
//! The tests run as root (they start daemons); every user-facing check runs
//! as the unprivileged user through [`Testbed::user`].
#![allow(dead_code)] // each test binary uses a different part

pub mod dry_run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The running test bed.
pub struct Testbed {
    /// The unprivileged user that submits jobs and runs `shoal`.
    pub user: String,
    pub home: PathBuf,
    /// `127.0.0.1:5443`
    pub registry: String,
    /// CA certificate of the registry's self-signed TLS certificate.
    pub ca_cert: PathBuf,
    /// Where this build's binaries are (`target/debug` or `target/release`).
    pub target_dir: PathBuf,
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The build directory the running test binary belongs to: test binaries
/// live in `<target>/<profile>/deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in <target>/<profile>/deps")
        .to_path_buf()
}

/// Brings the test bed up (once per test binary; `up.sh` itself is
/// idempotent and locked, so test binaries share one cluster) without
/// touching the plugin Slurm loads: for tests of the `shoal` command.
pub fn testbed() -> &'static Testbed {
    static TESTBED: OnceLock<Testbed> = OnceLock::new();
    TESTBED.get_or_init(|| bring_up(false))
}

/// Like [`testbed`], and installs this build's plugin (and `shoal`) into
/// the cluster first: for tests that go through Slurm.
pub fn slurm() -> &'static Testbed {
    static SLURM: OnceLock<Testbed> = OnceLock::new();
    SLURM.get_or_init(|| bring_up(true))
}

fn bring_up(install: bool) -> Testbed {
    {
        let target = target_dir();
        assert!(
            target.join("libspank_shoal.so").is_file() && target.join("shoal").is_file(),
            "{}: plugin or shoal binary missing; run `cargo build --workspace` before the tests \
             (tests/run.sh does)",
            target.display()
        );
        let series = slurm_series();
        if install && series != "22.05" {
            let so = target.join(format!("slurm-{series}/libspank_shoal.so"));
            assert!(
                so.is_file(),
                "{}: no plugin for Slurm {series}; run `bash packaging/build-plugin.sh {series}` first (tests/run.sh does)",
                so.display()
            );
        }
        let up = repo_root().join("tests/testbed/up.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&up);
        if install {
            cmd.arg("--install").arg(&target);
        }
        let out = cmd.output().expect("run tests/testbed/up.sh");
        assert!(
            out.status.success(),
            "test bed failed to come up:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let user = "alice".to_string();
        Testbed {
            home: PathBuf::from(format!("/home/{user}")),
            user,
            registry: "127.0.0.1:5443".into(),
            ca_cert: "/var/lib/shoal-testbed/tls/cert.pem".into(),
            target_dir: target,
        }
    }
}

/// The Slurm series the tests run against (`SHOAL_TESTBED_SLURM`, default
/// the host's 22.05). 24.11 and 26.05 run from chroot clusters
/// (`tests/testbed/chroot-cluster.sh`); [`Testbed::user`] and
/// [`Testbed::root`] then run inside that cluster's namespace, so `srun`,
/// `sbatch` and what root inspects (mounts, logs, caches) are that node's.
pub fn slurm_series() -> String {
    std::env::var("SHOAL_TESTBED_SLURM").unwrap_or_else(|_| "22.05".into())
}

/// Whether the chosen test bed's Slurm calls the plugin's job prolog: not
/// with `PrologFlags=RunInJob` (the 24.11 bed), where Slurm 24.11.5 runs
/// no SPANK prolog in the extern step.
pub fn spank_prolog_runs() -> bool {
    let conf = std::fs::read_to_string(node_path("/etc/slurm/slurm.conf")).expect("slurm.conf");
    !conf.lines().any(|l| l.starts_with("PrologFlags=") && l.contains("RunInJob"))
}

/// The test bed's MPICH image for jobs whose batch script runs `srun`
/// inside it: that srun is the node's, and 24.11's and 26.05's Debian builds
/// need glibc 2.38, so those test beds use the Debian 13 one.
pub fn mpich_image_tag() -> &'static str {
    if slurm_series() == "22.05" {
        "debian-mpich:12"
    } else {
        "debian-mpich:13"
    }
}

/// A `pgrep -f` pattern for the slurmd of NODE in the chosen cluster only
/// (the host's run as `slurmd -N nX`, a chroot cluster's as `slurmd -D -N nX`).
pub fn slurmd_pattern(node: &str) -> String {
    if slurm_series() == "22.05" {
        format!("^slurmd -N {node}$")
    } else {
        format!("^slurmd -D -N {node}$")
    }
}

/// Where root on this machine finds PATH as the chosen cluster's nodes see
/// it: PATH itself on the host's 22.05; for a chroot cluster, the same path
/// under its namespace's root (`/proc/HOLDER/root`), because its `/etc`
/// (slurm.conf, shoal.toml), `/var/log/slurm` and node cache
/// `/var/cache/shoal` are the tree's own, not the host's.
pub fn node_path(path: &str) -> PathBuf {
    let series = slurm_series();
    if series == "22.05" {
        return PathBuf::from(path);
    }
    let pidfile = format!("/var/lib/shoal-testbed/run/slurm-{series}.holder");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("{pidfile}: {e}: is the Slurm {series} cluster up (tests/testbed/up.sh)?"));
    PathBuf::from(format!("/proc/{}/root{path}", pid.trim()))
}

/// The command prefix that enters the chosen cluster (empty for 22.05).
fn enter() -> Vec<String> {
    if slurm_series() == "22.05" {
        return Vec::new();
    }
    vec!["bash".into(), repo_root().join("tests/testbed/enter.sh").display().to_string()]
}

fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

impl Testbed {
    /// This build's `shoal` binary (readable and executable by the user).
    pub fn shoal(&self) -> PathBuf {
        self.target_dir.join("shoal")
    }

    /// Runs a bash script as the unprivileged user, in their home directory,
    /// with a clean login-like environment.
    pub fn user(&self, script: &str) -> Output {
        let mut argv = enter();
        argv.push("runuser".into());
        command(&argv)
            .args(["-u", &self.user, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.user))
            .arg(format!("LOGNAME={}", self.user))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg("LANG=C.UTF-8")
            .args(["bash", "-c"])
            .arg(format!("cd ~ && {script}"))
            .output()
            .expect("runuser")
    }

    /// Runs a bash script as root.
    pub fn root(&self, script: &str) -> Output {
        let mut argv = enter();
        argv.push("bash".into());
        command(&argv).args(["-c", script]).output().expect("bash")
    }

    /// Runs a bash script as the user on the host itself, whatever the
    /// cluster: for preparing files with the host's compilers (the host's
    /// MPICH is the site MPI the `mpich` module injects).
    pub fn host_user(&self, script: &str) -> Output {
        Command::new("runuser")
            .args(["-u", &self.user, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg("LANG=C.UTF-8")
            .args(["bash", "-c"])
            .arg(format!("cd ~ && {script}"))
            .output()
            .expect("runuser")
    }

    /// Runs a bash script as root on the host (e.g. `tests/testbed/up.sh`,
    /// which picks the cluster from SHOAL_TESTBED_SLURM itself).
    pub fn host_root(&self, script: &str) -> Output {
        Command::new("bash").args(["-c", script]).output().expect("bash")
    }

    /// A fresh directory owned by the user, under their home.
    pub fn user_tempdir(&self, name: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .home
            .join("tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let script = format!("rm -rf '{0}' && mkdir -p '{0}'", dir.display());
        ok(&self.user(&script));
        dir
    }
}

/// The command's stdout; panics with everything it printed if it failed.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's stderr; panics if it succeeded.
#[track_caller]
pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Copies each of `tags` of the OCI layout at `dir` to `dest(tag)` in the
/// test registry (as root, with the test bed's CA), then removes `dir`.
pub fn push_oci_tags<'a>(tb: &Testbed, dir: &Path, tags: impl IntoIterator<Item = &'a str>, dest: impl Fn(&str) -> String) {
    for tag in tags {
        ok(&tb.root(&format!(
            "skopeo copy -q --dest-cert-dir /var/lib/shoal-testbed/tls/skopeo oci:{}:{tag} docker://{}",
            dir.display(),
            dest(tag)
        )));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One test of this binary at a time, for tests that share one node's
/// slurmd, cache entries or tracer (`cargo test` runs a binary's tests on
/// several threads). A test that panicked does not poison it for the rest.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Says on the test run's stderr why a test does not run on this test bed
/// (written past the test harness's output capture, so CI logs show it).
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} on Slurm {}: {why}", slurm_series());
}
