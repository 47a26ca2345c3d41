//! The `--dry-run` text of a [`Plan`]: one fact per line, mounts in order.

use std::fmt::Write as _;

use super::lower::{flags_text, lower, Facts};
use super::model::*;

impl Plan {
    /// The `--dry-run` text: one fact per line, mounts in order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "mode     {}", self.mode);
        let via = match &self.root.via {
            ImageMount::Fuse { squashfuse, shoal: Some(_) } => format!(
                "FUSE as uid {} (Shoal's image server; squashfuse_ll {} for xz/lzo/xattr images){}",
                self.identity.uid,
                squashfuse.display(),
                match self.root.owner {
                    Some((u, g)) => format!(", every file shown as {u}:{g}"),
                    None => String::new(),
                }
            ),
            ImageMount::Fuse { squashfuse, shoal: None } => {
                format!("FUSE as uid {} (squashfuse_ll {}, the site's image_server)", self.identity.uid, squashfuse.display())
            }
            ImageMount::KernelLoop => "kernel squashfs on a read-only loop device".into(),
        };
        let _ = writeln!(s, "image    {} via {via}, ro,nosuid,nodev", self.root.squashfs.display());
        let _ = writeln!(
            s,
            "root     overlay(image, {}) nosuid,nodev, {} after setup",
            self.root.upper.as_ref().map_or("tmpfs".to_string(), |u| u.upper.display().to_string()),
            match (&self.root.upper, self.root.writable) {
                (_, false) => "read-only",
                (None, true) => "writable (changes lost at exit)",
                (Some(u), true) if u.own_dirs => "writable (changes kept in the layer; the image's directories made the user's)",
                (Some(_), true) => "writable (changes kept in the layer)",
            }
        );
        if self.remap_root {
            let _ = writeln!(s, "userns   uid 0 inside = uid {} outside (--container-remap-root)", self.identity.uid);
        }
        // The flags the executor's syscalls give, with the facts as planned.
        let ops = lower(self, &Facts::as_planned(self));
        for (i, m) in self.mounts.iter().enumerate() {
            let what = match &m.kind {
                MountKind::Tmpfs { mode, .. } => format!("tmpfs mode={mode:o}"),
                MountKind::Devpts => "devpts newinstance,ptmxmode=0666".into(),
                MountKind::Symlink { to } => {
                    let _ = writeln!(s, "link  {:>2} {} -> {}", i + 1, m.target.display(), to.display());
                    continue;
                }
                MountKind::Copy { source } => {
                    let _ = writeln!(s, "copy  {:>2} {} <- {} (its contents, read-only) (host)", i + 1, m.target.display(), source.display());
                    continue;
                }
                MountKind::CharDevice { major, minor, mode } => {
                    let _ = writeln!(s, "node  {:>2} {} char {major}:{minor} mode {mode:o} (made by root)", i + 1, m.target.display());
                    continue;
                }
                MountKind::Bind { source, as_user, .. } => format!(
                    "bind {}{}",
                    source.display(),
                    if *as_user { " (opened as the user)" } else { "" }
                ),
            };
            let origin = &m.origin;
            let _ = writeln!(
                s,
                "mount {:>2} {} <- {what} [{}] ({origin})",
                i + 1,
                m.target.display(),
                flags_text(&ops, i).unwrap_or_default()
            );
        }
        s.push_str(&render_setup(self));
        let _ = writeln!(s, "etc      /etc/passwd += {}", self.identity.passwd_line());
        let _ = writeln!(
            s,
            "etc      /etc/group += {}",
            self.identity
                .groups
                .iter()
                .map(|(n, g)| format!("{n}:{g}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            s,
            "ids      uid={} gid={} groups={}{}",
            self.identity.uid,
            self.identity.gid,
            self.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            if self.drop_privileges { " (dropped from root before exec)" } else { " (as outside)" }
        );
        let _ = writeln!(s, "security no_new_privs, all capabilities cleared (bounding set too)");
        match &self.cwd.preferred {
            Some(p) => {
                let _ = writeln!(s, "cwd      {} (else {})", p.display(), self.cwd.fallback.display());
            }
            None => {
                let _ = writeln!(s, "cwd      {}", self.cwd.fallback.display());
            }
        }
        for (k, v) in &self.env {
            let _ = writeln!(s, "env      {k}={v}");
        }
        let _ = writeln!(s, "argv     {:?}", self.argv);
        s
    }
}

/// The `--dry-run` lines for the setup steps.
fn render_setup(plan: &Plan) -> String {
    let mut s = String::new();
    for (i, step) in plan.setup.iter().enumerate() {
        let _ = match step {
            SetupStep::Own { path } => writeln!(
                s,
                "setup {:>2} chown {} to uid {} gid {}",
                i + 1,
                path.display(),
                plan.identity.uid,
                plan.identity.gid
            ),
            SetupStep::WriteFile { path, contents } => {
                writeln!(s, "setup {:>2} write {} {:?} (as the user)", i + 1, path.display(), contents)
            }
            SetupStep::Configure { path, contents } => writeln!(
                s,
                "setup {:>2} write {} {:?} if {} exists (as the user)",
                i + 1,
                path.display(),
                contents,
                path.parent().unwrap_or(std::path::Path::new("/")).display()
            ),
            SetupStep::Run { argv, why } => writeln!(
                s,
                "setup {:>2} run {:?} as the user, no_new_privs, must exit 0  # {why}",
                i + 1,
                argv
            ),
            SetupStep::BindWithin { source, target, why } => writeln!(
                s,
                "setup {:>2} bind {} -> {} [ro,nosuid,nodev]  # {why}",
                i + 1,
                source.display(),
                target.display()
            ),
        };
    }
    s
}

