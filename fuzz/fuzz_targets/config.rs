//! The site config (root's file, but parsed in every context: a parser
//! crash would take slurmd's plugin down with it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = shoal::Config::parse(s, std::path::Path::new("/etc/shoal/shoal.toml")) {
        let _ = shoal::config::module_names(&c);
        let _ = c.image.squash_options();
    }
});
