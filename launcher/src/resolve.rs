//! From a stored image to what the launcher runs: its run settings and
//! whether the kernel may mount it. Shared by `shoal run` and the SPANK
//! plugin so both treat every image the same way.

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

use crate::container::{RunConfig, RunImage};
use crate::image::manifest;
use crate::image::store::StoredImage;

/// The launcher's view of an image's run settings.
pub fn run_config(config: &manifest::ImageConfig) -> RunConfig {
    RunConfig {
        env: config.env.clone(),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        workdir: config.workdir.clone(),
    }
}

/// A stored image as the launcher runs it. Only site-store images may meet
/// the kernel's squashfs parser: no user can have written them.
pub fn run_image(stored: &StoredImage) -> RunImage {
    RunImage {
        squashfs: stored.squashfs.clone(),
        config: run_config(&stored.config),
        scope: stored.scope,
        // `shoal run` reads the user's own store, or root's site store
        // (kernel-mounted): nothing to check it against a tree for.
        verity: None,
    }
}
