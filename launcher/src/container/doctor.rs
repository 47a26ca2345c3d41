//! `shoal doctor`: checks what a node needs to run containers and says how
//! to fix each failure.
//!
//! Only looks; must never change the node (the user-namespace probe runs in
//! a child process that exits at once).

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::sys;
use crate::config::Config;

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>, fix: &str) -> Check {
    Check { name, ok, detail: detail.into(), fix: if ok { String::new() } else { fix.into() } }
}

fn probe_userns() -> Result<(), String> {
    // In a child, so this process is left as it was.
    match sys::child_can_unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) {
        Ok(true) => Ok(()),
        Ok(false) => Err("unshare(CLONE_NEWUSER) refused".into()),
        Err(e) => Err(format!("fork: {e}")),
    }
}

fn filesystems() -> String {
    std::fs::read_to_string("/proc/filesystems").unwrap_or_default()
}

/// Runs every check. `config_path` is the config in effect.
pub fn checks(config_path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();

    let userns = probe_userns();
    out.push(check(
        "user namespaces",
        userns.is_ok(),
        userns.err().unwrap_or_else(|| "unprivileged user + mount namespaces work".into()),
        "enable them: sysctl user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 / kernel.apparmor_restrict_unprivileged_userns=0 where present)",
    ));

    let fuse = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse");
    let mode = std::fs::metadata("/dev/fuse").map(|m| m.permissions().mode() & 0o777).ok();
    out.push(check(
        "/dev/fuse",
        fuse.is_ok() && (root || mode.is_some()),
        match (&fuse, mode) {
            (Ok(_), Some(m)) => format!("opens read-write (mode {m:o})"),
            (Err(e), Some(m)) => format!("mode {m:o}: {e}"),
            (_, None) => "missing".into(),
        },
        "modprobe fuse, and make /dev/fuse mode 0666 (udev rule or chmod 666 /dev/fuse)",
    ));

    let cfg = Config::load(config_path);
    let sq = cfg.as_ref().map(|c| c.launcher.squashfuse_path()).unwrap_or_else(|_| Config::default().launcher.squashfuse_path());
    let sq_ok = std::fs::metadata(&sq).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    out.push(check(
        "squashfuse_ll",
        sq_ok,
        format!("{}{}", sq.display(), if sq_ok { "" } else { " missing" }),
        "install the `squashfuse` package (Debian/Ubuntu), or set [launcher] squashfuse",
    ));

    let fs = filesystems();
    let has = |name: &str| fs.lines().any(|l| l.split_whitespace().last() == Some(name));
    let kernel_sq = has("squashfs");
    out.push(check(
        "kernel squashfs",
        kernel_sq,
        if kernel_sq { "registered" } else { "not in /proc/filesystems" },
        "modprobe squashfs (needed only for site-store images mounted by root)",
    ));
    let loopctl = Path::new("/dev/loop-control").exists();
    let loop_open = !root || std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").is_ok();
    out.push(check(
        "loop devices",
        loopctl && loop_open,
        if loopctl { "/dev/loop-control present" } else { "/dev/loop-control missing" },
        "modprobe loop (needed only for site-store images mounted by root)",
    ));
    let ovl = has("overlay");
    out.push(check(
        "overlay",
        ovl,
        if ovl { "registered" } else { "not in /proc/filesystems" },
        "modprobe overlay (the container root is an overlay)",
    ));

    match &cfg {
        Ok(_) => out.push(check("config", true, format!("{} valid", config_path.display()), "")),
        Err(e) => out.push(check("config", false, e.to_string(), "fix the file; `shoal config check` names the line")),
    }
    if let Ok(c) = &cfg {
        if let Some(site) = &c.store.site_dir {
            let md = std::fs::metadata(site);
            let ok = md.as_ref().map(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0).unwrap_or(false);
            out.push(check(
                "site store",
                ok,
                match &md {
                    Ok(m) => format!("{} owner uid {} mode {:o}", site.display(), m.uid(), m.mode() & 0o7777),
                    Err(e) => format!("{}: {e}", site.display()),
                },
                "create it owned by root and not writable by users (chown root; chmod 755); otherwise its images are treated as user images",
            ));
        }
        if let Some(user) = &c.store.user_dir {
            let ok = user.exists() || user.parent().map(|p| p.exists()).unwrap_or(false);
            out.push(check(
                "user store",
                ok,
                user.display().to_string(),
                "point [store] user_dir at a directory users can create",
            ));
        }
    }
    out
}

/// The table: one check a line, with the fix for each failure.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<16} {:<5} DETAIL / FIX", "CHECK", "OK");
    for c in checks {
        let _ = writeln!(s, "{:<16} {:<5} {}", c.name, if c.ok { "ok" } else { "FAIL" }, c.detail);
        if !c.ok {
            let _ = writeln!(s, "{:<16} {:<5} fix: {}", "", "", c.fix);
        }
    }
    s
}
