//! The base runtime (glibc, libstdc++, libgcc_s): never injected, only
//! checked: the image's own copies must define every symbol version a host
//! library needs from them (`decide.rs` checks that). Which libraries they
//! are, and the symbol-version prefix of each family.


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
pub(super) fn runtime_version_prefix(family: &str) -> &'static str {
    match family {
        "libstdc++" => "GLIBCXX",
        "libgcc_s" => "GCC",
        _ => "GLIBC",
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
