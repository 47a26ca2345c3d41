//! The ABI check's ELF reader, on files of the user's image (run in
//! slurmstepd with the user's effective ids when a module is asked for).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if shoal::inject::elf::is_elf(data) {
        if let Ok(info) = shoal::inject::elf::parse(data) {
            for p in &info.search_paths {
                let _ = shoal::inject::elf::expand_origin(std::path::Path::new(p), std::path::Path::new("/usr/lib"));
            }
            let _ = shoal::inject::elf::newest(&info.version_defs, "GLIBC_");
        }
    }
});
