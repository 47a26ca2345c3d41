//! Host device nodes a module binds into the container.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::config::DeviceSpec;

use super::image::{kind_of, ImageFs};
use super::plan::{BindMount, MountKind, Step};
use super::InjectError;

pub(super) fn device_spec(module: &str, field: &str, entry: &str) -> Result<DeviceSpec, InjectError> {
    DeviceSpec::parse(entry).map_err(|e| InjectError::Module(format!("[modules.{module}] {field}: {e}")))
}

/// A host device node bound at `target` (nosuid; device access allowed).
pub(super) fn device_bind(module: &str, dev: &Path, target: PathBuf, image: &dyn ImageFs) -> Result<Step, InjectError> {
    let meta = fs::metadata(dev).map_err(|e| InjectError::Host {
        path: dev.to_path_buf(),
        message: format!("[modules.{module}] {e}"),
    })?;
    if !meta.file_type().is_char_device() && !meta.file_type().is_block_device() {
        return Err(InjectError::Host {
            path: dev.to_path_buf(),
            message: format!("[modules.{module}] not a device node"),
        });
    }
    Ok(Step::Bind(BindMount {
        source: dev.to_path_buf(),
        target_in_image: kind_of(image, &target).is_some(),
        target,
        kind: MountKind::Device,
        read_only: false,
        nosuid: true,
        nodev: false,
        why: format!("device of module {module}"),
    }))
}
