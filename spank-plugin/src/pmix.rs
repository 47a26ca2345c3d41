//! slurmstepd, for `srun --mpi=pmix` steps in an image: the host
//! directories every task's PMIx client needs, bound into the task's
//! container at the same path.
//!
//! Slurm's mpi/pmix plugin runs its PMIx server in slurmstepd and, before
//! the tasks fork, makes two directories per step and node (as root, then
//! `chown(uid, -1)` to the job's user, mode 0700):
//! - the server tmpdir `SlurmdSpoolDir/pmix.JOB.STEP` (`$PMIX_SERVER_TMPDIR`):
//!   the shared-memory key-value store (`pmix_dstor_ds21_PID/`,
//!   `pmix_dstor_ds12_PID/`, `$PMIX_DSTORE_*_BASE_PATH`) that every client
//!   maps, with its lock files;
//! - the client dir `TmpFS/spmix_appdir_UID_JOB.STEP`, handed to clients as
//!   the job's `PMIX_NSDIR` (Open MPI keeps its job session files there).
//!
//! Nothing else is needed: the server's URI (`$PMIX_SERVER_URI*`) is TCP
//! on the loopback, which the container shares with the host, and the
//! `PMIX_*` variables are put into the task's environment by Slurm after
//! this plugin's task hook (the env deny list never drops them either).
//!
//! Must never: bind a path named by the job's environment. `PMIX_*`,
//! `SLURM_PMIX_TMPDIR` and `SLURM_PMIX_SRV_TMPDIR` are the user's to set;
//! what root binds is named only by slurm.conf (root's file, read from
//! slurmstepd's own environment's `SLURM_CONF` or the default path) and the
//! step's credential (job, step, uid), and checked to be what Slurm made
//! (see [`check`]).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use shoal::container::PmixDir as Kind;

/// slurm.conf as Debian's Slurm (and upstream's default build) reads it.
const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";
/// Slurm's defaults when slurm.conf does not set them.
const DEFAULT_SPOOL_DIR: &str = "/var/spool/slurmd";
const DEFAULT_TMP_FS: &str = "/tmp";
/// Job-environment variables with which Slurm's plugin moves the server
/// and the client directory somewhere this module does not look.
const MOVED_BY: [&str; 2] = ["SLURM_PMIX_SRV_TMPDIR", "SLURM_PMIX_TMPDIR"];

/// The two slurm.conf settings the PMIx directories live under, unexpanded
/// (`%n`, `%h` as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmdDirs {
    pub spool_dir: String,
    pub tmp_fs: String,
}

impl SlurmdDirs {
    /// Reads slurm.conf (and the files it `Include`s) as root.
    pub fn load() -> Result<SlurmdDirs, String> {
        // slurmstepd's own environment comes from slurmd, not from the job.
        let path = std::env::var_os("SLURM_CONF").map_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF), PathBuf::from);
        let mut dirs = SlurmdDirs { spool_dir: DEFAULT_SPOOL_DIR.into(), tmp_fs: DEFAULT_TMP_FS.into() };
        read_conf(&path, &mut dirs, 0).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(dirs)
    }
}

fn read_conf(path: &Path, dirs: &mut SlurmdDirs, depth: u32) -> io::Result<()> {
    let text = fs::read_to_string(path)?;
    for include in parse_conf(&text, dirs) {
        if depth >= 8 {
            return Err(io::Error::other("Include nested too deeply"));
        }
        // Slurm resolves a relative Include against the including file's
        // directory. Globs are left out: the two settings are top-level ones.
        let inc = path.parent().unwrap_or(Path::new("/")).join(include);
        if !inc.to_string_lossy().contains(['*', '?', '[']) {
            read_conf(&inc, dirs, depth + 1)?;
        }
    }
    Ok(())
}

/// Applies `SlurmdSpoolDir=` and `TmpFS=` of one slurm.conf text (keys are
/// case-insensitive, `#` starts a comment, several `Key=Value` may share a
/// line, a later setting wins, entry lines like `NodeName=` are skipped);
/// returns the `Include` paths in order.
fn parse_conf(text: &str, dirs: &mut SlurmdDirs) -> Vec<String> {
    let mut includes = Vec::new();
    let mut logical = String::new();
    for raw in text.lines() {
        let line = strip_comment(raw);
        // A trailing backslash continues the line.
        if let Some(head) = line.strip_suffix('\\') {
            logical.push_str(head);
            continue;
        }
        logical.push_str(&line);
        let line = std::mem::take(&mut logical);
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.eq_ignore_ascii_case("include") {
            if let Some(p) = words.next() {
                includes.push(unquote(p).to_string());
            }
            continue;
        }
        // Keys after NodeName=, PartitionName=, ... belong to that entry.
        let entry = first.split_once('=').map_or("", |(k, _)| k);
        if ENTRY_KEYS.iter().any(|k| k.eq_ignore_ascii_case(entry)) {
            continue;
        }
        for word in std::iter::once(first).chain(words) {
            let Some((key, value)) = word.split_once('=') else { continue };
            let value = unquote(value).to_string();
            if key.eq_ignore_ascii_case("SlurmdSpoolDir") {
                dirs.spool_dir = value;
            } else if key.eq_ignore_ascii_case("TmpFS") {
                dirs.tmp_fs = value;
            }
        }
    }
    includes
}

/// slurm.conf lines that describe one entry rather than global settings.
const ENTRY_KEYS: [&str; 5] = ["NodeName", "PartitionName", "NodeSet", "DownNodes", "FrontendName"];

fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                out.push('#');
                chars.next();
            }
            '#' => break,
            c => out.push(c),
        }
    }
    out.trim_end().to_string()
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

/// Slurm's per-node expansion of slurmd paths: `%n` is the node name, `%h`
/// the node's host name (Slurm takes NodeHostname; here the host name
/// slurmstepd runs with, which is the same unless slurm.conf maps node
/// names to other host names).
fn expand(path: &str, node: &str, host: &str) -> PathBuf {
    PathBuf::from(path.replace("%n", node).replace("%h", host))
}

/// One directory Slurm's PMIx plugin makes for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmixDir {
    pub path: PathBuf,
    pub kind: Kind,
}

/// The step's two PMIx directories on this node, from trusted facts only.
pub fn step_dirs(dirs: &SlurmdDirs, node: &str, host: &str, uid: u32, job: u32, step: u32) -> [PmixDir; 2] {
    [
        PmixDir {
            path: expand(&dirs.spool_dir, node, host).join(format!("pmix.{job}.{step}")),
            kind: Kind::ServerTmpdir,
        },
        PmixDir {
            path: expand(&dirs.tmp_fs, node, host).join(format!("spmix_appdir_{uid}_{job}.{step}")),
            kind: Kind::ClientDir,
        },
    ]
}

/// What root found at one of the step's PMIx paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing: not a `--mpi=pmix` step.
    Absent,
    /// A directory as Slurm makes it.
    Slurms,
    /// Something else, never bound: why.
    Foreign(String),
}

/// The rule for what root binds: the path (built by [`step_dirs`] from
/// slurm.conf and the credential's ids, never from the job's environment)
/// must be, without following a symlink, a directory owned by the job's
/// user and by slurmstepd's group, writable by no one else: exactly what
/// Slurm's `mkdir` (as root) plus `chown(uid, -1)` leaves. Anything else
/// there was not made by Slurm for this step (in a world-writable TmpFS
/// another user could have put it there first): it is never bound, and it
/// fails a PMIx step with a message naming it (a step without PMIx ignores
/// it, so a stray entry cannot be used to break other users' steps).
///
/// Safe because root binds only the step's own directories at their own
/// paths, and the bind itself is then opened with the user's credentials
/// (`as_user`): should the user swap the directory between this check and
/// the open (possible only in a user-writable TmpFS), they bind what they
/// could have bound with `--mount` anyway.
pub fn check(meta: &fs::Metadata, uid: u32, stepd_gid: u32) -> Result<(), String> {
    let ft = meta.file_type();
    if ft.is_symlink() || !ft.is_dir() {
        return Err("not a directory (a symlink or other file is never followed)".into());
    }
    if meta.uid() != uid || meta.gid() != stepd_gid {
        return Err(format!(
            "owned by {}:{}, but Slurm makes it {uid}:{stepd_gid} (the job's user, slurmstepd's group)",
            meta.uid(),
            meta.gid()
        ));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(format!("mode {:o} is writable by others", meta.mode() & 0o7777));
    }
    Ok(())
}

/// Looks at one path as root, without following symlinks.
fn inspect(dir: &PmixDir, uid: u32, stepd_gid: u32) -> Result<Found, String> {
    match fs::symlink_metadata(&dir.path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Absent),
        Err(e) => Err(format!("{} {}: {e}", dir.kind.what(), dir.path.display())),
        Ok(meta) => Ok(check(&meta, uid, stepd_gid).map_or_else(Found::Foreign, |()| Found::Slurms)),
    }
}

fn env_get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Which of the step's two directories (server, client) to bind, given
/// what root found there: pure, so every case is a unit test.
fn decide(found: [(PmixDir, Found); 2], job_env: &[(String, String)], srun_said_pmix: bool) -> Result<Vec<PmixDir>, String> {
    // Whether this is a PMIx step at all: one of its directories is there,
    // or srun said so. (The job's `SLURM_MPI_TYPE` only decides whether a
    // missing or foreign directory is an error; it never names what is bound.)
    let pmix_step = srun_said_pmix || found.iter().any(|(_, f)| *f == Found::Slurms);
    let mut bind = Vec::new();
    for ((dir, state), moved_by) in found.into_iter().zip(MOVED_BY) {
        match state {
            Found::Slurms => bind.push(dir),
            // In a step that does not use PMIx, a stray entry (say, made in
            // a shared /tmp by another user) must not fail the step.
            Found::Foreign(why) if pmix_step => {
                return Err(format!(
                    "{} {} is not Slurm's: {why}; it is not bound into the image. Ask the admins to check it",
                    dir.kind.what(),
                    dir.path.display()
                ))
            }
            Found::Foreign(_) => {}
            Found::Absent if pmix_step && env_get(job_env, moved_by).is_some() => {
                return Err(format!(
                    "${moved_by} is set: it moves Slurm's {} where an image step cannot follow it (only the \
                     directories slurm.conf names are bound into the image); unset it for --mpi=pmix in an image",
                    dir.kind.what()
                ))
            }
            Found::Absent => {}
        }
    }
    Ok(bind)
}

/// The step's PMIx directories the container binds (read-write: clients
/// take locks in the store and write session files), when the step has them.
pub fn step_dirs_to_bind(
    job_env: &[(String, String)],
    node: &str,
    uid: u32,
    job: u32,
    step: u32,
) -> Result<Vec<(PathBuf, Kind)>, String> {
    let srun_said_pmix = env_get(job_env, "SLURM_MPI_TYPE").is_some_and(|t| t.starts_with("pmix"));
    let dirs = match SlurmdDirs::load() {
        Ok(d) => d,
        // Only a PMIx step needs slurm.conf here; others must not fail on it.
        Err(e) if srun_said_pmix => return Err(format!("{e}; it names where Slurm keeps the step's PMIx directories")),
        Err(_) => return Ok(Vec::new()),
    };
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim().split('.').next().filter(|h| !h.is_empty()).unwrap_or(node);
    let stepd_gid = nix::unistd::getgid().as_raw();
    let [server, client] = step_dirs(&dirs, node, host, uid, job, step);
    let server_found = inspect(&server, uid, stepd_gid)?;
    let client_found = inspect(&client, uid, stepd_gid)?;
    let found = decide([(server, server_found), (client, client_found)], job_env, srun_said_pmix)?;
    let mut binds = Vec::new();
    for dir in found {
        crate::spank::log_verbose(&format!("{}: job {job}.{step}: binding the {} {}", crate::TAG, dir.kind.what(), dir.path.display()));
        binds.push((dir.path, dir.kind));
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn defaults() -> SlurmdDirs {
        SlurmdDirs { spool_dir: DEFAULT_SPOOL_DIR.into(), tmp_fs: DEFAULT_TMP_FS.into() }
    }

    #[test]
    fn reads_both_settings_case_insensitively_with_comments() {
        let mut d = defaults();
        let inc = parse_conf(
            "# SlurmdSpoolDir=/wrong\nslurmdspooldir=/var/spool/slurmd/%n  # per node\n\
             TmpFS=/first MpiDefault=none\nTmpFS=\"/scratch/%n/tmp\"\nNodeName=n1 TmpFS=/nope\ninclude extra.conf\n",
            &mut d,
        );
        assert_eq!(d.spool_dir, "/var/spool/slurmd/%n");
        // A later setting wins; an entry line's keys are not settings.
        assert_eq!(d.tmp_fs, "/scratch/%n/tmp");
        assert_eq!(inc, ["extra.conf"]);
        let mut d = defaults();
        parse_conf("ClusterName=x\n", &mut d);
        assert_eq!(d, defaults());
    }

    #[test]
    fn the_step_dirs_come_from_the_config_and_ids() {
        let d = SlurmdDirs { spool_dir: "/var/spool/slurmd/%n".into(), tmp_fs: "/var/spool/slurmd/%n/tmp".into() };
        let [srv, cli] = step_dirs(&d, "n2", "host", 1001, 481, 0);
        assert_eq!(srv.path, Path::new("/var/spool/slurmd/n2/pmix.481.0"));
        assert_eq!(cli.path, Path::new("/var/spool/slurmd/n2/tmp/spmix_appdir_1001_481.0"));
        let d = SlurmdDirs { spool_dir: "/spool/%h".into(), tmp_fs: "/tmp".into() };
        let [srv, cli] = step_dirs(&d, "n2", "node02", 7, 1, 2);
        assert_eq!(srv.path, Path::new("/spool/node02/pmix.1.2"));
        assert_eq!(cli.path, Path::new("/tmp/spmix_appdir_7_1.2"));
    }

    fn two(server: Found, client: Found) -> [(PmixDir, Found); 2] {
        let d = SlurmdDirs { spool_dir: "/spool".into(), tmp_fs: "/tmp".into() };
        let [s, c] = step_dirs(&d, "n1", "n1", 1001, 5, 0);
        [(s, server), (c, client)]
    }

    #[test]
    fn what_is_bound_and_what_fails_the_step() {
        let none: Vec<(String, String)> = Vec::new();
        let paths = |v: Vec<PmixDir>| v.into_iter().map(|d| d.path).collect::<Vec<_>>();
        // A PMIx step: both bound.
        let both = decide(two(Found::Slurms, Found::Slurms), &none, true).unwrap();
        assert_eq!(paths(both), [PathBuf::from("/spool/pmix.5.0"), PathBuf::from("/tmp/spmix_appdir_1001_5.0")]);
        // No PMIx: nothing bound, nothing fails, not even a stray entry.
        assert_eq!(decide(two(Found::Absent, Found::Absent), &none, false).unwrap(), []);
        assert_eq!(decide(two(Found::Absent, Found::Foreign("x".into())), &none, false).unwrap(), []);
        // A stray entry in a PMIx step fails it, naming the path.
        let e = decide(two(Found::Slurms, Found::Foreign("owned by 1002:1002".into())), &none, false).unwrap_err();
        assert!(e.contains("/tmp/spmix_appdir_1001_5.0 is not Slurm's: owned by 1002:1002"), "{e}");
        // A directory moved by the user's variable: named in the error.
        let moved = vec![("SLURM_PMIX_TMPDIR".to_string(), "/home/u/x".to_string())];
        let e = decide(two(Found::Slurms, Found::Absent), &moved, false).unwrap_err();
        assert!(e.contains("$SLURM_PMIX_TMPDIR is set"), "{e}");
        // ...but only in a PMIx step.
        assert_eq!(decide(two(Found::Absent, Found::Absent), &moved, false).unwrap(), []);
    }

    #[test]
    fn only_a_directory_as_slurm_makes_it_passes() {
        let base = std::env::temp_dir().join(format!("shoal-pmix-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let my_gid = fs::metadata(&base).unwrap().gid();
        let dir = base.join("pmix.1.0");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let pd = |p: &Path| PmixDir { path: p.to_path_buf(), kind: Kind::ClientDir };
        assert_eq!(inspect(&pd(&dir), me, my_gid), Ok(Found::Slurms));
        assert_eq!(inspect(&pd(&base.join("missing")), me, my_gid), Ok(Found::Absent));
        // Wrong owner, wrong group, others may write, a symlink, a file.
        let foreign = |p: &Path, uid: u32, gid: u32| match inspect(&pd(p), uid, gid) {
            Ok(Found::Foreign(why)) => why,
            other => panic!("{}: {other:?}", p.display()),
        };
        assert!(foreign(&dir, me + 1, my_gid).contains("owned by"));
        assert!(foreign(&dir, me, my_gid + 1).contains("owned by"));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(foreign(&dir, me, my_gid).contains("writable by others"));
        let link = base.join("spmix_appdir_1_1.0");
        symlink("/etc", &link).unwrap();
        assert!(foreign(&link, me, my_gid).contains("never followed"));
        let file = base.join("file");
        fs::write(&file, "").unwrap();
        assert!(foreign(&file, me, my_gid).contains("not a directory"));
        fs::remove_dir_all(&base).unwrap();
    }
}
