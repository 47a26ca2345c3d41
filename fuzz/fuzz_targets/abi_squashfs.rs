//! The ABI check's squashfs reader (`backhand`, through
//! `inject::image::SquashfsImage`), which slurmstepd runs on the user's
//! image file with the user's effective ids when a module is asked for.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shoal::fuzzing::abi_squashfs(data));
