//! The image server's squashfs reader, on a file the user crafted and gave
//! as `--image=PATH` (it runs as the user, but a panic or a hang kills or
//! stalls their container, and root builds on top of what it serves).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::squashfs(data);
});
