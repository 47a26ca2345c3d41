//! The site policy that accepts or refuses a user's mount requests
//! (`--mount SRC:DST[:ro]`, Shifter's `--volume`; parsed by
//! [`crate::mount_spec`]).
//!
//! Pure: compares paths, never touches the filesystem.
//! Resolving the source happens later, with the user's own credentials
//! (see `rootfs.rs`); this module must never open anything.

use std::path::{Path, PathBuf};

pub use crate::mount_spec::{normalize, SpecError, UserMount};

/// Why a mount request was refused; each message names the input and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not `SRC:DST[:ro|:rw]` ([`UserMount::parse`]).
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("mount {input:?} refused by site policy: targets under {prefix} are reserved for the system; pick another target such as /data, or ask the site admin to add it to [mounts] allowed_targets")]
    ReservedTarget { input: String, prefix: String },
}

/// Target prefixes a user may not mount over unless the site allows it:
/// the image's system files and the kernel interfaces.
pub const RESERVED_TARGETS: &[&str] = &[
    "/etc", "/usr", "/proc", "/sys", "/dev", "/lib", "/lib32", "/lib64", "/libx32", "/bin",
    "/sbin",
];

impl UserMount {
    /// Accepts the mount or names the rule it breaks. `allowed` lists target
    /// prefixes the site opened up (`[mounts] allowed_targets`).
    pub fn check(&self, allowed: &[PathBuf]) -> Result<(), PolicyError> {
        let input = format!(
            "{}:{}{}",
            self.source.display(),
            self.target.display(),
            if self.read_only { ":ro" } else { "" }
        );
        if allowed.iter().any(|a| self.target.starts_with(a)) {
            return Ok(());
        }
        if self.target == Path::new("/") {
            return Err(PolicyError::ReservedTarget { input, prefix: "/".into() });
        }
        for prefix in RESERVED_TARGETS {
            if self.target.starts_with(prefix) {
                return Err(PolicyError::ReservedTarget {
                    input,
                    prefix: (*prefix).into(),
                });
            }
        }
        Ok(())
    }
}

/// Whether a host directory may be bound at the same path inside (the
/// caller's cwd): not the root and not a reserved system tree.
pub fn same_path_bind_allowed(p: &Path) -> bool {
    p != Path::new("/") && !RESERVED_TARGETS.iter().any(|r| p.starts_with(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<UserMount, SpecError> {
        UserMount::parse(s, Path::new("/home/u/work"))
    }

    #[test]
    fn reserved_targets_refused_unless_allowed() {
        for t in ["/etc", "/etc/x", "/usr/lib", "/proc/1", "/sys", "/dev/shm", "/lib64", "/"] {
            let m = p(&format!("/src:{t}")).unwrap();
            let e = m.check(&[]).unwrap_err().to_string();
            assert!(e.contains("refused by site policy"), "{t}: {e}");
            assert!(e.contains("allowed_targets"), "{t}: {e}");
        }
        // Prefixes are matched by path component, not by string.
        p("/src:/etcetera").unwrap().check(&[]).unwrap();
        p("/src:/library").unwrap().check(&[]).unwrap();
        p("/src:/etc/site").unwrap().check(&["/etc/site".into()]).unwrap();
    }
}
