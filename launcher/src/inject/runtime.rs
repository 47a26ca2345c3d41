//! The base runtime (glibc, libstdc++, libgcc_s): never injected, only
//! checked: the image's own copies must define every symbol version a host
//! library needs from them.

use std::collections::BTreeSet;

use super::decide::{Builder, HostObject};
use super::discover::FoundLib;
use super::elf;
use super::plan::{Action, LibraryDecision, ObjectKind};

/// The base runtime: never injected, only checked. glibc's own libraries
/// must come as one set with the image's loader; libstdc++ and libgcc_s are
/// the compiler runtime every C++ program of the image already uses.
pub fn base_runtime(soname: &str) -> Option<&'static str> {
    const GLIBC: &[&str] = &[
        "libc.so.",
        "libm.so.",
        "libpthread.so.",
        "libdl.so.",
        "librt.so.",
        "libresolv.so.",
        "libutil.so.",
        "libanl.so.",
        "libmvec.so.",
        "libBrokenLocale.so.",
        "libnss_",
        "libthread_db.so.",
        "libc_malloc_debug.so.",
        "ld-linux",
        "ld64.so.",
        "ld.so.",
    ];
    if GLIBC.iter().any(|p| soname.starts_with(p)) {
        Some("glibc")
    } else if soname.starts_with("libstdc++.so.") {
        Some("libstdc++")
    } else if soname.starts_with("libgcc_s.so.") {
        Some("libgcc_s")
    } else {
        None
    }
}

/// Version-name prefix of a runtime, for "defines up to GLIBCXX_3.4.30".
fn runtime_version_prefix(family: &str) -> &'static str {
    match family {
        "libstdc++" => "GLIBCXX",
        "libgcc_s" => "GCC",
        _ => "GLIBC",
    }
}

impl Builder<'_> {
    /// Checks that the image's copy of base-runtime library `needed`
    /// defines every symbol version `obj` needs from it; adds its row once.
    pub(super) fn check_runtime(&mut self, obj: &HostObject, name: &str, needed: &str) -> Result<(), String> {
        let info = obj.elf.as_ref().expect("checked objects are ELF");
        let family = base_runtime(needed).unwrap_or("glibc");
        let found: Vec<FoundLib> = self
            .image
            .by_soname(needed)
            .into_iter()
            .filter(|f| {
                f.elf
                    .as_ref()
                    .is_ok_and(|e| e.machine == info.machine && e.is_64 == info.is_64)
            })
            .collect();
        let Some(first) = found.first() else {
            return Err(format!(
                "host {} ({name}) needs {needed}, which the image does not have (no {family} of this architecture in its library directories)",
                obj.real.display()
            ));
        };
        let defs: BTreeSet<String> = found
            .iter()
            .flat_map(|f| {
                f.elf
                    .as_ref()
                    .map(|e| e.version_defs.clone())
                    .unwrap_or_default()
            })
            .collect();
        let prefix = runtime_version_prefix(family);
        let newest = elf::newest(&defs, prefix)
            .unwrap_or("no versions")
            .to_string();
        if self.runtime_checked.insert(needed.to_string()) {
            self.rows.push(LibraryDecision {
                module: obj.module.clone(),
                kind: ObjectKind::Runtime,
                name: needed.to_string(),
                needed_by: Some(name.to_string()),
                host: None,
                host_version: None,
                image: Some(first.real.clone()),
                image_version: Some(newest.clone()),
                action: Action::UseImage,
                warning: false,
                reason: format!("base runtime ({family}): never injected; the image's copy defines up to {newest}"),
            });
        }
        let wanted = info.version_needs.get(needed).cloned().unwrap_or_default();
        let missing: Vec<&String> = wanted.difference(&defs).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        Err(format!(
            "host {} ({name}) needs {} from {needed}, but the image's {} defines only up to {newest}: the image's {family} is older than the host library needs",
            obj.real.display(),
            missing.join(", "),
            first.real.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_runtime_is_glibc_and_the_compiler_runtime() {
        for glibc in [
            "libc.so.6",
            "libm.so.6",
            "libpthread.so.0",
            "libdl.so.2",
            "librt.so.1",
            "ld-linux-x86-64.so.2",
        ] {
            assert_eq!(base_runtime(glibc), Some("glibc"), "{glibc}");
        }
        assert_eq!(base_runtime("libstdc++.so.6"), Some("libstdc++"));
        assert_eq!(base_runtime("libgcc_s.so.1"), Some("libgcc_s"));
        for other in [
            "libmpich.so.12",
            "libcrypt.so.1",
            "libcuda.so.1",
            "librdmacm.so.1",
        ] {
            assert_eq!(base_runtime(other), None, "{other}");
        }
    }
}
