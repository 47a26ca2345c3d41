//! `--image` / `shoal pull` references: whatever parses must be safe to use
//! as store paths (tag index entries are built from its parts) and must
//! print back to a reference that parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::{ImageSpec, Digest};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.hex().len(), 64);
        assert!(d.hex().bytes().all(|c| c.is_ascii_hexdigit()));
    }
    let Ok(spec) = s.parse::<ImageSpec>() else { return };
    if let ImageSpec::Registry(r) = spec {
        assert!(!r.registry().contains('/') && !r.registry().is_empty(), "{s:?}: registry {:?}", r.registry());
        for c in r.repository().split('/') {
            assert!(!c.is_empty() && c != "." && c != "..", "{s:?}: repository component {c:?}");
        }
        if let Some(t) = r.tag() {
            assert!(!t.contains('/') && !t.starts_with('.'), "{s:?}: tag {t:?}");
        }
        let again: ImageSpec = r.to_string().parse().unwrap_or_else(|e| panic!("{s:?} printed as {r} which does not parse: {e}"));
        assert_eq!(again, ImageSpec::Registry(r));
    }
});
