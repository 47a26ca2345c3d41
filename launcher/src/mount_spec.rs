//! A bind written `SRC:DST[:ro|:rw]` (a user's `--mount`, Shifter's
//! `--volume`, a site's `[mounts] site` entry), parsed into paths.
//!
//! Pure: parses strings, never touches the filesystem. Whether a bind is
//! allowed is the container's policy (`container/policy.rs`); reading the
//! site's entries is the config's (`config/`): both use this one parser.

use std::path::{Component, Path, PathBuf};

/// One bind, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Text that is not a bind; each message names the input and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid mount {input:?}: expected `SRC:DST[:ro|:rw]` with absolute paths, e.g. `/scratch/data:/data:ro`")]
    Syntax { input: String },
    #[error("invalid mount {input:?}: unknown flag {flag:?}; only `ro` and `rw` are supported")]
    Flag { input: String, flag: String },
    #[error("invalid mount {input:?}: {what} must be an absolute path without `..`")]
    NotAbsolute { input: String, what: &'static str },
}

impl UserMount {
    /// Parses `SRC:DST[:ro|:rw]` (also `SRC` alone, meaning the same path
    /// inside). Relative sources are taken against `cwd`.
    pub fn parse(input: &str, cwd: &Path) -> Result<UserMount, SpecError> {
        let syntax = || SpecError::Syntax { input: input.to_string() };
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
                return Err(SpecError::Flag {
                    input: input.to_string(),
                    flag: f.to_string(),
                })
            }
        };
        let source = normalize(&cwd.join(src)).ok_or(SpecError::NotAbsolute {
            input: input.to_string(),
            what: "the source",
        })?;
        let target = normalize(Path::new(dst))
            .filter(|_| dst.starts_with('/'))
            .ok_or(SpecError::NotAbsolute {
                input: input.to_string(),
                what: "the target",
            })?;
        Ok(UserMount { source, target, read_only })
    }

    /// Parses Shifter's `--volume` value: several mounts separated by `;`.
    pub fn parse_volumes(input: &str, cwd: &Path) -> Result<Vec<UserMount>, SpecError> {
        input
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| UserMount::parse(s, cwd))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<UserMount, SpecError> {
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
        assert!(matches!(p("/a:/b:ro:x"), Err(SpecError::Syntax { .. })));
        assert!(matches!(p(":/b"), Err(SpecError::Syntax { .. })));
        assert!(matches!(p("/a:/b:perNodeCache"), Err(SpecError::Flag { .. })));
        assert!(matches!(p("/a:data"), Err(SpecError::NotAbsolute { .. })));
        assert!(matches!(p("/a:/data/../etc"), Err(SpecError::NotAbsolute { .. })));
    }

    #[test]
    fn volumes_split_on_semicolons() {
        let v = UserMount::parse_volumes("/a:/x;/b:/y:ro; ", Path::new("/")).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[1].read_only);
    }
}
