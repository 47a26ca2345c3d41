//! What users type as options: `--mount`/`--volume` (and `SHOAL_MOUNT`),
//! `--env`, `--env-file`, `--compression`. An accepted mount has absolute,
//! `..`-free paths (root opens the source as the user and resolves the
//! target in the container root).
#![no_main]
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use shoal::container::{parse_assignment, parse_env_file, UserMount};

fn clean(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| !matches!(c, Component::ParentDir))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let cwd = Path::new("/home/alice/work");
    if let Ok(m) = UserMount::parse(s, cwd) {
        assert!(clean(&m.source) && clean(&m.target), "{s:?} -> {m:?}");
        let _ = m.check(&[]);
    }
    if let Ok(ms) = UserMount::parse_volumes(s, cwd) {
        for m in ms {
            assert!(clean(&m.source) && clean(&m.target), "{s:?} -> {m:?}");
        }
    }
    if let Ok((k, _)) = parse_assignment(s) {
        assert!(!k.is_empty() && !k.contains('='));
    }
    let _ = parse_env_file(s, "fuzz");
    let _ = s.parse::<shoal::image::convert::Compression>();
});
