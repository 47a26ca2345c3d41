//! Lowering: a [`Plan`]'s mounts become the exact syscalls that make them
//! ([`MountOp`], with their `MS_*` flags), given what the node says about
//! the mount sources ([`Facts`]). Pure, so the rules are tested as data
//! with made-up facts; `rootfs` carries the ops out one by one and
//! `--dry-run` prints the flags they give, so the two cannot drift.
//!
//! The rules:
//! - a tmpfs is a directory of the container's one assembly tmpfs
//!   (`nosuid,nodev`), bound at the target, then remounted when the
//!   mount wants other flags (`noexec`, `ro`, device nodes allowed);
//! - a bind keeps the flags the kernel locks on its source (a mount from a
//!   more privileged namespace) and is remounted only when the plan wants
//!   more than those (`nosuid,nodev`, `ro`);
//! - a devpts is a new instance, `nosuid,noexec` (nodev would stop its ptys);
//! - links and device nodes are made in a tmpfs the plan mounted earlier;
//! - a bind whose optional source this node lacks is skipped.
//!
//! Host files copied into the skeleton (`MountKind::Copy`) are not mounts:
//! `rootfs` writes them while it makes the skeleton.

use std::path::PathBuf;

use libc::c_ulong;

use super::model::{MountKind, Plan};

/// The assembly tmpfs's flags, which directories bound from it keep.
pub(crate) const ASSEMBLY_FLAGS: c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// What the node says about one bind source, opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceFact {
    /// The `MS_*` flags the source's filesystem is mounted with, which a
    /// bind remount must keep (see [`super::sys::locked_flags`]).
    pub locked: c_ulong,
}

/// The facts a lowering needs, one entry per plan mount: `Some` for a bind
/// whose source was opened, `None` for a bind whose (optional) source this
/// node lacks, and for every mount that is not a bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub sources: Vec<Option<SourceFact>>,
}

impl Facts {
    /// The facts as the plan assumes them: every bind source there, none
    /// with locked flags. What `--dry-run` lowers with.
    pub fn as_planned(plan: &Plan) -> Facts {
        Facts {
            sources: plan
                .mounts
                .iter()
                .map(|m| matches!(m.kind, MountKind::Bind { .. }).then(SourceFact::default))
                .collect(),
        }
    }
}

/// One step of making the plan's mounts, in order; `mount` is the index of
/// the plan mount it makes. Paths are container paths, resolved inside the
/// new root when the op is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// `symlinkat(to, target)` in the plan's tmpfs over the target's parent.
    Symlink { mount: usize, target: PathBuf, to: PathBuf },
    /// `mknodat(target, S_IFCHR | mode, makedev(major, minor))` there, then
    /// `fchmodat(mode)` (the umask narrowed it).
    CharDevice { mount: usize, target: PathBuf, major: u32, minor: u32, mode: u32 },
    /// `mkdirat(stage, scratch/N)`, `fchmodat(mode)`, then
    /// `mount(scratch/N, target, NULL, flags)`: a directory of the assembly
    /// tmpfs bound at the target (one tmpfs for all of the container's
    /// scratch directories: a bind costs about half a new tmpfs).
    Scratch { mount: usize, target: PathBuf, mode: u32, flags: c_ulong },
    /// `mount("devpts", target, "devpts", flags, data)`.
    Devpts { mount: usize, target: PathBuf, flags: c_ulong, data: &'static str },
    /// `mount(source, target, NULL, flags)`, the source opened before;
    /// `keeps`: the flags it brings from its source (not a syscall argument).
    Bind { mount: usize, source: PathBuf, target: PathBuf, flags: c_ulong, keeps: c_ulong },
    /// `mount(NULL, target, NULL, flags)` of the bind just made there.
    Remount { mount: usize, target: PathBuf, flags: c_ulong },
    /// Nothing: an optional source this node lacks.
    Skip { mount: usize, target: PathBuf },
}

impl MountOp {
    /// The index of the plan mount this op makes.
    pub fn mount(&self) -> usize {
        match self {
            MountOp::Symlink { mount, .. }
            | MountOp::CharDevice { mount, .. }
            | MountOp::Scratch { mount, .. }
            | MountOp::Devpts { mount, .. }
            | MountOp::Bind { mount, .. }
            | MountOp::Remount { mount, .. }
            | MountOp::Skip { mount, .. } => *mount,
        }
    }
}

/// The plan's mounts as syscalls, in order (pure).
///
/// # Panics
/// When `facts` does not hold one entry per plan mount (a caller's bug).
pub fn lower(plan: &Plan, facts: &Facts) -> Vec<MountOp> {
    assert_eq!(facts.sources.len(), plan.mounts.len(), "one fact per plan mount");
    let mut ops = Vec::with_capacity(plan.mounts.len() * 2);
    for (i, (m, fact)) in plan.mounts.iter().zip(&facts.sources).enumerate() {
        let target = m.target.clone();
        let mut want = if m.harden { libc::MS_NOSUID | libc::MS_NODEV } else { 0 };
        if m.read_only {
            want |= libc::MS_RDONLY;
        }
        match &m.kind {
            MountKind::Copy { .. } => {}
            MountKind::Symlink { to } => ops.push(MountOp::Symlink { mount: i, target, to: to.clone() }),
            MountKind::CharDevice { major, minor, mode } => {
                ops.push(MountOp::CharDevice { mount: i, target, major: *major, minor: *minor, mode: *mode })
            }
            MountKind::Tmpfs { mode, noexec, devices } => {
                if *noexec {
                    want |= libc::MS_NOEXEC;
                }
                if *devices {
                    want &= !libc::MS_NODEV;
                }
                ops.push(MountOp::Scratch { mount: i, target: target.clone(), mode: *mode, flags: libc::MS_BIND });
                if want != ASSEMBLY_FLAGS {
                    ops.push(MountOp::Remount { mount: i, target, flags: libc::MS_REMOUNT | libc::MS_BIND | want });
                }
            }
            MountKind::Devpts => ops.push(MountOp::Devpts {
                mount: i,
                target,
                // gid= is left out: the tty group is not mapped in a user namespace.
                flags: libc::MS_NOSUID | libc::MS_NOEXEC,
                data: "newinstance,ptmxmode=0666,mode=0620",
            }),
            MountKind::Bind { source, recursive, .. } => {
                let Some(fact) = fact else {
                    ops.push(MountOp::Skip { mount: i, target });
                    continue;
                };
                let rec = if *recursive { libc::MS_REC } else { 0 };
                ops.push(MountOp::Bind {
                    mount: i,
                    source: source.clone(),
                    target: target.clone(),
                    flags: libc::MS_BIND | rec,
                    keeps: fact.locked,
                });
                // A source mounted nosuid,nodev (,ro) already needs no remount.
                if want & !fact.locked != 0 {
                    ops.push(MountOp::Remount { mount: i, target, flags: libc::MS_REMOUNT | libc::MS_BIND | fact.locked | want });
                }
            }
        }
    }
    ops
}

/// The flags plan mount `mount` ends up with after `ops`, as `--dry-run`
/// prints them (`rw,nosuid,nodev,rec`); `None` for what is not a mount.
pub(crate) fn flags_text(ops: &[MountOp], mount: usize) -> Option<String> {
    let mut flags = None;
    let mut rec = false;
    for op in ops.iter().filter(|op| op.mount() == mount) {
        match op {
            MountOp::Scratch { .. } => flags = Some(ASSEMBLY_FLAGS),
            MountOp::Devpts { flags: f, .. } => flags = Some(*f),
            MountOp::Bind { flags: f, keeps, .. } => {
                rec = f & libc::MS_REC != 0;
                flags = Some(*keeps);
            }
            MountOp::Remount { flags: f, .. } => flags = Some(*f),
            MountOp::Symlink { .. } | MountOp::CharDevice { .. } | MountOp::Skip { .. } => {}
        }
    }
    let flags = flags?;
    let mut f = vec![if flags & libc::MS_RDONLY != 0 { "ro" } else { "rw" }];
    for (bit, name) in [(libc::MS_NOSUID, "nosuid"), (libc::MS_NODEV, "nodev"), (libc::MS_NOEXEC, "noexec")] {
        if flags & bit != 0 {
            f.push(name);
        }
    }
    if rec {
        f.push("rec");
    }
    Some(f.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::model::{Mount, Origin};

    fn mount(target: &str, kind: MountKind, read_only: bool, harden: bool) -> Mount {
        Mount { target: target.into(), kind, read_only, harden, origin: Origin::System, required: true }
    }

    fn bind(source: &str, recursive: bool) -> MountKind {
        MountKind::Bind { source: source.into(), recursive, as_user: false }
    }

    fn plan_with(mounts: Vec<Mount>) -> Plan {
        let mut p = crate::container::plan::tests::plain_plan();
        p.mounts = mounts;
        p
    }

    const NOSUID_NODEV: c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

    #[test]
    fn a_hardened_bind_is_remounted_unless_its_source_has_the_flags_already() {
        let p = plan_with(vec![mount("/data", bind("/scratch", true), true, true)]);
        let ops = lower(&p, &Facts { sources: vec![Some(SourceFact { locked: 0 })] });
        assert_eq!(
            ops,
            [
                MountOp::Bind { mount: 0, source: "/scratch".into(), target: "/data".into(), flags: libc::MS_BIND | libc::MS_REC, keeps: 0 },
                MountOp::Remount { mount: 0, target: "/data".into(), flags: libc::MS_REMOUNT | libc::MS_BIND | NOSUID_NODEV | libc::MS_RDONLY },
            ]
        );
        assert_eq!(flags_text(&ops, 0).as_deref(), Some("ro,nosuid,nodev,rec"));
        // A source on a nosuid,nodev,noexec filesystem: the remount keeps noexec
        // (the kernel refuses to drop a locked flag).
        let locked = NOSUID_NODEV | libc::MS_NOEXEC;
        let ops = lower(&p, &Facts { sources: vec![Some(SourceFact { locked })] });
        assert_eq!(ops[1], MountOp::Remount { mount: 0, target: "/data".into(), flags: libc::MS_REMOUNT | libc::MS_BIND | locked | libc::MS_RDONLY });
        // Already read-only too: the bind alone, with the source's flags.
        let locked = locked | libc::MS_RDONLY;
        let ops = lower(&p, &Facts { sources: vec![Some(SourceFact { locked })] });
        assert_eq!(ops.len(), 1);
        assert_eq!(flags_text(&ops, 0).as_deref(), Some("ro,nosuid,nodev,noexec,rec"));
    }

    #[test]
    fn a_bind_without_hardening_is_one_syscall_and_a_missing_optional_source_none() {
        let p = plan_with(vec![
            mount("/dev/null", bind("/dev/null", false), false, false),
            Mount { required: false, ..mount("/etc/localtime-dir", bind("/nope", false), false, true) },
        ]);
        let ops = lower(&p, &Facts { sources: vec![Some(SourceFact { locked: NOSUID_NODEV }), None] });
        assert_eq!(
            ops,
            [
                MountOp::Bind { mount: 0, source: "/dev/null".into(), target: "/dev/null".into(), flags: libc::MS_BIND, keeps: NOSUID_NODEV },
                MountOp::Skip { mount: 1, target: "/etc/localtime-dir".into() },
            ]
        );
        assert_eq!(flags_text(&ops, 1), None);
    }

    #[test]
    fn tmpfs_mounts_are_assembly_directories_remounted_only_for_other_flags() {
        let tmpfs = |noexec, devices| MountKind::Tmpfs { mode: 0o755, noexec, devices };
        let p = plan_with(vec![
            mount("/tmp", tmpfs(false, false), false, true),
            mount("/dev", tmpfs(true, true), false, true),
            mount("/ro", tmpfs(false, false), true, true),
        ]);
        let ops = lower(&p, &Facts::as_planned(&p));
        let scratch = |mount: usize, t: &str| MountOp::Scratch { mount, target: t.into(), mode: 0o755, flags: libc::MS_BIND };
        let remount = |mount: usize, t: &str, f: c_ulong| MountOp::Remount { mount, target: t.into(), flags: libc::MS_REMOUNT | libc::MS_BIND | f };
        assert_eq!(
            ops,
            [
                scratch(0, "/tmp"),
                scratch(1, "/dev"),
                remount(1, "/dev", libc::MS_NOSUID | libc::MS_NOEXEC),
                scratch(2, "/ro"),
                remount(2, "/ro", NOSUID_NODEV | libc::MS_RDONLY),
            ]
        );
        assert_eq!(flags_text(&ops, 0).as_deref(), Some("rw,nosuid,nodev"));
        assert_eq!(flags_text(&ops, 1).as_deref(), Some("rw,nosuid,noexec"));
    }

    #[test]
    fn a_plugin_style_plan_lowers_with_every_hardened_mount_remounted() {
        use crate::container::model::{PmixDir, SlurmPath};
        let mut r = crate::container::plan::tests::alice_request();
        r.privileged = true;
        r.slurm = vec![("/etc/slurm".into(), SlurmPath::Client)];
        r.pmix = vec![("/var/spool/slurmd/pmix.7.0".into(), PmixDir::ServerTmpdir)];
        let p = crate::container::plan(&r, &crate::config::Config::default()).unwrap();
        let ops = lower(&p, &Facts::as_planned(&p));
        let text = p.render();
        for (i, m) in p.mounts.iter().enumerate() {
            let Some(flags) = flags_text(&ops, i) else { continue };
            // The dry run prints the lowered flags, nothing of its own.
            assert!(text.contains(&format!("{} <- ", m.target.display())) && text.contains(&format!("[{flags}]")), "{m:?}");
            if m.harden && matches!(m.kind, MountKind::Bind { .. }) {
                let last = ops.iter().rev().find(|op| op.mount() == i).unwrap();
                let MountOp::Remount { flags, .. } = last else { panic!("{m:?} not remounted: {last:?}") };
                assert_eq!(flags & NOSUID_NODEV, NOSUID_NODEV, "{m:?}");
                assert_eq!(flags & libc::MS_RDONLY != 0, m.read_only, "{m:?}");
            }
        }
        assert!(text.contains("/etc/slurm <- bind /etc/slurm [ro,nosuid,nodev] (Slurm client)"), "{text}");
    }

    #[test]
    fn devpts_links_and_nodes() {
        let p = plan_with(vec![
            mount("/dev", MountKind::Tmpfs { mode: 0o755, noexec: true, devices: true }, false, true),
            mount("/dev/pts", MountKind::Devpts, false, false),
            mount("/dev/ptmx", MountKind::CharDevice { major: 5, minor: 2, mode: 0o666 }, false, false),
            mount("/dev/fd", MountKind::Symlink { to: "/proc/self/fd".into() }, false, false),
            mount("/etc/hosts", MountKind::Copy { source: "/etc/hosts".into() }, true, true),
        ]);
        let ops = lower(&p, &Facts::as_planned(&p));
        assert_eq!(
            &ops[2..],
            [
                MountOp::Devpts { mount: 1, target: "/dev/pts".into(), flags: libc::MS_NOSUID | libc::MS_NOEXEC, data: "newinstance,ptmxmode=0666,mode=0620" },
                MountOp::CharDevice { mount: 2, target: "/dev/ptmx".into(), major: 5, minor: 2, mode: 0o666 },
                MountOp::Symlink { mount: 3, target: "/dev/fd".into(), to: "/proc/self/fd".into() },
            ]
        );
        assert_eq!(flags_text(&ops, 1).as_deref(), Some("rw,nosuid,noexec"));
        assert_eq!(flags_text(&ops, 4), None, "a copy is no mount");
    }
}
