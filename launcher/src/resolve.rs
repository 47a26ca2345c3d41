//! From what a user named (`--image=...`, `shoal run IMAGE`) to what the
//! launcher runs: a store lookup or a squashfs path, turned into a
//! [`RunImage`]. Shared by `shoal run` and the SPANK plugin so both treat
//! every image the same way.

use std::path::Path;

use crate::container::{ImageConfig, RunImage};
use crate::image::manifest;
use crate::image::store::{Scope, Store, StoreError, StoredImage};
use crate::reference::ImageSpec;

/// The launcher's view of an image's run settings.
pub fn run_config(config: &manifest::ImageConfig) -> ImageConfig {
    ImageConfig {
        env: config.env.clone(),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        workdir: config.workdir.clone(),
    }
}

/// A stored image as the launcher runs it. Only site-store images may meet
/// the kernel's squashfs parser: no user can have written them.
pub fn run_image(stored: &StoredImage, squashfs: &Path) -> RunImage {
    RunImage {
        squashfs: squashfs.to_path_buf(),
        config: run_config(&stored.config),
        trusted_for_kernel_mount: stored.scope == Scope::Site,
    }
}

/// Resolves `spec` for `shoal run`: a squashfs path is used as it is (a
/// user's file, never trusted for a kernel mount); anything else is looked
/// up in the site store, then the user's.
pub fn resolve(store: &Store, spec: &ImageSpec) -> Result<RunImage, StoreError> {
    match spec {
        ImageSpec::File(path) => Ok(RunImage {
            squashfs: path.clone(),
            config: ImageConfig::default(),
            trusted_for_kernel_mount: false,
        }),
        other => {
            let stored = store.resolve(other)?;
            Ok(run_image(&stored, &stored.squashfs))
        }
    }
}
