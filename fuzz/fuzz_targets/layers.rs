//! Layer tarballs through the layer rules (tar parsing, whiteouts, links,
//! `..`, symlinks), up to three layers split at a `SHOAL-LAYER` marker,
//! top layer first.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut layers: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while layers.len() < 2 {
        match rest.windows(11).position(|w| w == b"SHOAL-LAYER") {
            Some(i) => {
                layers.push(&rest[..i]);
                rest = &rest[i + 11..];
            }
            None => break,
        }
    }
    layers.push(rest);
    shoal::fuzzing::layers(&layers);
});
