//! The node-local state of writable and named job containers, under
//! `[node] container_dir`, per Slurm node name (test nodes share one
//! filesystem):
//!
//! ```text
//! <container_dir>/<node>/                 root 0755
//!   job-<JOB>/                            root 0755  (removed by the epilog)
//!     step-<STEP>/                        an unnamed writable container (removed at step end)
//!     name-<NAME>/                        a named container, job scope
//!   user-<UID>/name-<NAME>/               a named container, global scope
//! each container directory (root 0755):
//!   meta.json                             root 0644: image pin, creating step
//!   lock, members                         root 0600: live processes (see container::enter_named)
//!   layer/                                root 0700: no user reaches it from outside
//!     upper/                              the container's writable root, the user's
//!     work/                               overlayfs's
//!     ready                               the user was given the image's directories
//! ```
//!
//! Only root writes here, and only paths it made: names are checked
//! (`pyxis::container_name`), every level is created without following
//! links and checked to be a root-owned directory.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal::config::ContainerScope;
use shoal::container::UpperLayer;

use crate::pin::Pin;

/// Where one container's state lives.
pub fn container_dir(config: &shoal::Config, node: &str, job: u32, uid: u32, which: &Which) -> PathBuf {
    let base = config.node.container_dir.join(node);
    match which {
        Which::Step(step) => base.join(format!("job-{job}")).join(format!("step-{step}")),
        Which::Named(name) => match config.slurm.container_scope {
            ContainerScope::Job => base.join(format!("job-{job}")).join(format!("name-{name}")),
            ContainerScope::Global => base.join(format!("user-{uid}")).join(format!("name-{name}")),
        },
    }
}

/// The directory of a job's containers on a node.
pub fn job_dir(config: &shoal::Config, node: &str, job: u32) -> PathBuf {
    config.node.container_dir.join(node).join(format!("job-{job}"))
}

/// An unnamed step's container, or a named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Step(String),
    Named(String),
}

/// What a named container remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub pin: Pin,
    /// `JOB.STEP.NODE` of the step that created it.
    pub created_by: String,
}

/// Reads a container's `meta.json` (also as the user: it is world-readable).
pub fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_str(&fs::read_to_string(dir.join("meta.json")).ok()?).ok()
}

/// Writes `meta.json` unless one is there (atomically: temp + rename).
/// Returns the meta now in force.
pub fn write_meta_once(dir: &Path, meta: &Meta) -> Result<Meta, String> {
    if let Some(m) = read_meta(dir) {
        return Ok(m);
    }
    let tmp = dir.join(format!(".meta.{}", std::process::id()));
    let text = serde_json::to_string(meta).map_err(|e| e.to_string())?;
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        // A peer may have written one meanwhile: the first stays.
        match fs::hard_link(&tmp, dir.join("meta.json")) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    };
    let r = write();
    let _ = fs::remove_file(&tmp);
    r.map_err(|e| format!("{}: {e}", dir.join("meta.json").display()))?;
    read_meta(dir).ok_or_else(|| format!("{}: unreadable after writing", dir.join("meta.json").display()))
}

/// `mkdir` of one level, then a check that it is a root-owned directory,
/// not a link, with `mode`.
fn root_dir(path: &Path, mode: u32) -> Result<(), String> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
    }
    let md = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(format!("{} is not a root-owned directory writable only by root; remove it", path.display()));
    }
    Ok(())
}

/// Makes the container directory and its layer (root, every level
/// checked), the upper directory owned by the user. Idempotent: the tasks
/// of a step all call it.
pub fn prepare(config: &shoal::Config, dir: &Path, uid: u32, gid: u32) -> Result<UpperLayer, String> {
    let base = &config.node.container_dir;
    let rel = dir.strip_prefix(base).map_err(|_| format!("{} is not under {}", dir.display(), base.display()))?;
    fs::DirBuilder::new().recursive(true).mode(0o755).create(base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    root_dir(base, 0o755)?;
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        root_dir(&cur, 0o755)?;
    }
    let layer = dir.join("layer");
    root_dir(&layer, 0o700)?;
    let upper = layer.join("upper");
    match fs::DirBuilder::new().mode(0o755).create(&upper) {
        Ok(()) => std::os::unix::fs::lchown(&upper, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", upper.display()))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", upper.display())),
    }
    let md = fs::symlink_metadata(&upper).map_err(|e| format!("{}: {e}", upper.display()))?;
    if !md.is_dir() {
        return Err(format!("{} is not a directory; remove it", upper.display()));
    }
    let work = layer.join("work");
    root_dir(&work, 0o700)?;
    Ok(UpperLayer { upper, work, own_dirs: !layer.join("ready").exists() })
}

/// Records that the builder gave the user the image's directories.
pub fn mark_ready(layer: &UpperLayer) {
    if let Some(dir) = layer.upper.parent() {
        let _ = fs::write(dir.join("ready"), b"");
    }
}

/// Removes a container directory (root; `remove_dir_all` never follows a
/// link out of the tree). Missing is fine.
pub fn remove(dir: &Path) -> Result<(), String> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_by_scope_and_node() {
        let mut c = shoal::Config::default();
        c.node.container_dir = "/var/lib/shoal/containers".into();
        assert_eq!(
            container_dir(&c, "n2", 7, 1001, &Which::Step("0".into())),
            Path::new("/var/lib/shoal/containers/n2/job-7/step-0")
        );
        assert_eq!(
            container_dir(&c, "n2", 7, 1001, &Which::Named("train".into())),
            Path::new("/var/lib/shoal/containers/n2/job-7/name-train")
        );
        c.slurm.container_scope = ContainerScope::Global;
        assert_eq!(
            container_dir(&c, "n1", 7, 1001, &Which::Named("train".into())),
            Path::new("/var/lib/shoal/containers/n1/user-1001/name-train")
        );
        assert_eq!(job_dir(&c, "n1", 7), Path::new("/var/lib/shoal/containers/n1/job-7"));
    }
}
