//! Library version numbers and the rule that compares a host library with
//! the image's copy it would replace.
//!
//! The SONAME (`libmpich.so.12`) carries the ABI major; the real file behind
//! the SONAME link (`libmpich.so.12.2.2`) carries minor and patch. Both come
//! from the ELF and the resolved file, never from the name a config or cache
//! happened to use.
//!
//! Libraries whose file name carries no minor: either the real file is named
//! exactly like the SONAME (`libfoo.so.1`), or it follows another scheme
//! (NVIDIA's `libcuda.so.535.104.05` behind SONAME `libcuda.so.1`). Then the
//! minor is unknown. Two unknown minors compare equal: the SONAME is the whole
//! promise such a library makes. One unknown against a known minor cannot be
//! compared: relaxed mode injects with a warning, strict mode refuses. The
//! symbol-version check (the image's library may define no version the host's
//! lacks) still applies in every case, and it is the stronger evidence.

use std::fmt;

use serde::Serialize;

use crate::config::AbiMode;

/// Version of one library file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibVersion {
    /// Numbers of the SONAME after `.so.` (`[12]`; OpenSSL's `libcrypto.so.1.1`: `[1, 1]`).
    pub major: Vec<u32>,
    /// First number after the SONAME in the real file name.
    pub minor: Option<u32>,
    /// Further numbers after the minor.
    pub patch: Vec<u32>,
    /// The real file name when it does not extend the SONAME (`libcuda.so.535.104.05`).
    pub other_scheme: Option<String>,
}

impl LibVersion {
    /// `soname` from the ELF, `file_name` of the resolved real file.
    pub fn new(soname: &str, file_name: &str) -> LibVersion {
        let major = soname
            .split_once(".so.")
            .map(|(_, v)| numbers(v))
            .unwrap_or_default();
        let mut version = LibVersion {
            major,
            minor: None,
            patch: Vec::new(),
            other_scheme: None,
        };
        if let Some(rest) = file_name
            .strip_prefix(soname)
            .and_then(|r| r.strip_prefix('.'))
        {
            let nums = numbers(rest);
            version.minor = nums.first().copied();
            version.patch = nums.get(1..).map(<[u32]>::to_vec).unwrap_or_default();
        } else if file_name != soname {
            version.other_scheme = Some(file_name.to_string());
        }
        version
    }
}

/// Leading dot-separated numbers (`2.2` of `2.2`, `4` of `4.dbg`).
fn numbers(s: &str) -> Vec<u32> {
    s.split('.').map_while(|p| p.parse().ok()).collect()
}

impl fmt::Display for LibVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
        let major = if self.major.is_empty() {
            "-".to_string()
        } else {
            join(&self.major)
        };
        write!(f, "{major}")?;
        if let Some(minor) = self.minor {
            write!(f, ".{minor}")?;
            if !self.patch.is_empty() {
                write!(f, ".{}", join(&self.patch))?;
            }
        }
        if let Some(other) = &self.other_scheme {
            write!(f, " ({other})")?;
        }
        Ok(())
    }
}

/// What the minor-version rule says about replacing the image's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MinorVerdict {
    /// Compatible; the reason says why.
    Match(String),
    /// Injected, but the admin should know.
    Warn(String),
    Refuse(String),
}

/// The established rule (same SONAME is checked by the caller): host minor
/// >= image minor is a full match; strict mode wants equal minors.
pub fn compare_minor(host: &LibVersion, image: &LibVersion, mode: AbiMode) -> MinorVerdict {
    match (host.minor, image.minor, mode) {
        (Some(h), Some(i), AbiMode::Relaxed) if h >= i => {
            MinorVerdict::Match(format!("host minor {h} >= image minor {i}"))
        }
        (Some(h), Some(i), AbiMode::Relaxed) => MinorVerdict::Warn(format!(
            "host minor {h} is older than image minor {i}: programs built against the newer library may miss symbols (strict mode refuses this)"
        )),
        (Some(h), Some(i), AbiMode::Strict) if h == i => {
            MinorVerdict::Match(format!("host minor {h} = image minor {i} (strict)"))
        }
        (Some(h), Some(i), AbiMode::Strict) => MinorVerdict::Refuse(format!(
            "strict ABI mode needs equal minors; host has {h}, image has {i}"
        )),
        (None, None, _) => MinorVerdict::Match("same SONAME; neither file name carries a minor".into()),
        (_, _, AbiMode::Relaxed) => MinorVerdict::Warn(
            "same SONAME; minors cannot be compared (one file name carries none)".into(),
        ),
        (_, _, AbiMode::Strict) => MinorVerdict::Refuse(
            "strict ABI mode needs equal minors; one file name carries none, so they cannot be compared".into(),
        ),
    }
}

/// `libmpich.so` of `libmpich.so.12`: the name shared by every major of a
/// library. A SONAME with no `.so` is its own stem.
pub fn stem(soname: &str) -> &str {
    match soname.find(".so.") {
        Some(at) => &soname[..at + 3],
        None => soname,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(soname: &str, file: &str) -> LibVersion {
        LibVersion::new(soname, file)
    }

    #[test]
    fn versions_come_from_the_real_file_name() {
        let x = v("libmpich.so.12", "libmpich.so.12.2.2");
        assert_eq!(
            (x.major.clone(), x.minor, x.patch.clone()),
            (vec![12], Some(2), vec![2])
        );
        assert_eq!(x.to_string(), "12.2.2");
        let ssl = v("libcrypto.so.1.1", "libcrypto.so.1.1");
        assert_eq!((ssl.major.clone(), ssl.minor), (vec![1, 1], None));
        let cuda = v("libcuda.so.1", "libcuda.so.535.104.05");
        assert_eq!((cuda.major.clone(), cuda.minor), (vec![1], None));
        assert_eq!(cuda.to_string(), "1 (libcuda.so.535.104.05)");
        assert_eq!(v("libfoo.so", "libfoo.so").major, Vec::<u32>::new());
    }

    #[test]
    fn relaxed_rule() {
        let r = |h, i| compare_minor(&v("libx.so.1", h), &v("libx.so.1", i), AbiMode::Relaxed);
        assert!(matches!(
            r("libx.so.1.3.0", "libx.so.1.2.9"),
            MinorVerdict::Match(_)
        ));
        assert!(matches!(
            r("libx.so.1.2.0", "libx.so.1.2.9"),
            MinorVerdict::Match(_)
        ));
        assert!(matches!(
            r("libx.so.1.1.0", "libx.so.1.2.0"),
            MinorVerdict::Warn(_)
        ));
        assert!(matches!(
            r("libx.so.1", "libx.so.1"),
            MinorVerdict::Match(_)
        ));
        assert!(matches!(
            r("libx.so.1", "libx.so.1.2"),
            MinorVerdict::Warn(_)
        ));
    }

    #[test]
    fn strict_rule_wants_equal_minors() {
        let s = |h, i| compare_minor(&v("libx.so.1", h), &v("libx.so.1", i), AbiMode::Strict);
        assert!(matches!(
            s("libx.so.1.2.0", "libx.so.1.2.7"),
            MinorVerdict::Match(_)
        ));
        assert!(matches!(
            s("libx.so.1.3.0", "libx.so.1.2.0"),
            MinorVerdict::Refuse(_)
        ));
        assert!(matches!(
            s("libx.so.1.1.0", "libx.so.1.2.0"),
            MinorVerdict::Refuse(_)
        ));
        assert!(matches!(
            s("libx.so.1", "libx.so.1.2"),
            MinorVerdict::Refuse(_)
        ));
    }

    #[test]
    fn stems() {
        assert_eq!(stem("libmpi.so.40"), "libmpi.so");
        assert_eq!(stem("libfoo.so"), "libfoo.so");
        assert_eq!(stem("libsomething.sooty.so.1"), "libsomething.sooty.so");
        assert_eq!(stem("ld-linux-x86-64.so.2"), "ld-linux-x86-64.so");
    }
}
