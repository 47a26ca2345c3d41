//! User mount requests (`--mount SRC:DST[:ro]`, Shifter's `--volume`) and the
//! site policy that accepts or refuses them.
//!
//! Pure: parses strings and compares paths, never touches the filesystem.
//! Resolving the source happens later, with the user's own credentials
//! (see `rootfs.rs`); this module must never open anything.

use std::path::{Component, Path, PathBuf};

/// One bind the user asked for, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Why a mount request was refused; each message names the input and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid mount {input:?}: expected `SRC:DST[:ro|:rw]` with absolute paths, e.g. `/scratch/data:/data:ro`")]
    Syntax { input: String },
    #[error("invalid mount {input:?}: unknown flag {flag:?}; only `ro` and `rw` are supported")]
    Flag { input: String, flag: String },
    #[error("mount {input:?} refused by site policy: targets under {prefix} are reserved for the system; pick another target such as /data, or ask the site admin to add it to [mounts] allowed_targets")]
    ReservedTarget { input: String, prefix: String },
    #[error("invalid mount {input:?}: {what} must be an absolute path without `..`")]
    NotAbsolute { input: String, what: &'static str },
}

/// Target prefixes a user may not mount over unless the site allows it:
/// the image's system files and the kernel interfaces.
pub const RESERVED_TARGETS: &[&str] = &[
    "/etc", "/usr", "/proc", "/sys", "/dev", "/lib", "/lib32", "/lib64", "/libx32", "/bin",
    "/sbin",
];

impl UserMount {
    /// Parses `SRC:DST[:ro|:rw]` (also `SRC` alone, meaning the same path
    /// inside). Relative sources are taken against `cwd`.
    pub fn parse(input: &str, cwd: &Path) -> Result<UserMount, PolicyError> {
        let syntax = || PolicyError::Syntax { input: input.to_string() };
        let parts: Vec<&str> = input.split(':').collect();
        let (src, dst, flag) = match parts.as_slice() {
            [s] => (*s, *s, None),
            [s, d] => (*s, *d, None),
            [s, d, f] => (*s, *d, Some(*f)),
            _ => return Err(syntax()),
        };
        if src.is_empty() || dst.is_empty() {
            return Err(syntax());
        }
        let read_only = match flag {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(f) => {
                return Err(PolicyError::Flag {
                    input: input.to_string(),
                    flag: f.to_string(),
                })
            }
        };
        let source = normalize(&cwd.join(src)).ok_or(PolicyError::NotAbsolute {
            input: input.to_string(),
            what: "the source",
        })?;
        let target = normalize(Path::new(dst))
            .filter(|_| dst.starts_with('/'))
            .ok_or(PolicyError::NotAbsolute {
                input: input.to_string(),
                what: "the target",
            })?;
        Ok(UserMount { source, target, read_only })
    }

    /// Parses Shifter's `--volume` value: several mounts separated by `;`.
    pub fn parse_volumes(input: &str, cwd: &Path) -> Result<Vec<UserMount>, PolicyError> {
        input
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| UserMount::parse(s, cwd))
            .collect()
    }

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

/// `/a/./b//c` -> `/a/b/c`; `None` for relative paths or any `..`, so a
/// target can never climb out of what the policy checked.
pub fn normalize(p: &Path) -> Option<PathBuf> {
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a host directory may be bound at the same path inside (the
/// caller's cwd): not the root and not a reserved system tree.
pub fn same_path_bind_allowed(p: &Path) -> bool {
    p != Path::new("/") && !RESERVED_TARGETS.iter().any(|r| p.starts_with(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<UserMount, PolicyError> {
        UserMount::parse(s, Path::new("/home/u/work"))
    }

    #[test]
    fn parses_forms() {
        assert_eq!(
            p("/scratch:/data:ro").unwrap(),
            UserMount { source: "/scratch".into(), target: "/data".into(), read_only: true }
        );
        assert_eq!(p("/scratch").unwrap().target, PathBuf::from("/scratch"));
        assert_eq!(p("in:/in").unwrap().source, PathBuf::from("/home/u/work/in"));
        assert_eq!(p("/a//b/./c:/x/").unwrap().source, PathBuf::from("/a/b/c"));
        assert!(!p("/a:/b:rw").unwrap().read_only);
    }

    #[test]
    fn refuses_bad_syntax() {
        assert!(matches!(p("/a:/b:ro:x"), Err(PolicyError::Syntax { .. })));
        assert!(matches!(p(":/b"), Err(PolicyError::Syntax { .. })));
        assert!(matches!(p("/a:/b:perNodeCache"), Err(PolicyError::Flag { .. })));
        assert!(matches!(p("/a:data"), Err(PolicyError::NotAbsolute { .. })));
        assert!(matches!(p("/a:/data/../etc"), Err(PolicyError::NotAbsolute { .. })));
    }

    #[test]
    fn volumes_split_on_semicolons() {
        let v = UserMount::parse_volumes("/a:/x;/b:/y:ro; ", Path::new("/")).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[1].read_only);
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
