//! The per-library decision table and the injection plan built from it:
//! plain data, printed by `shoal abi-check` and carried out by the launcher.
//!
//! The data types live here; the work is split by job: `decide.rs` (the
//! decision table), `runtime.rs` (the base-runtime check), `steps.rs` (the
//! plan's steps from the table), `devices.rs` (device nodes) and
//! `render.rs` (text for `abi-check` and `--dry-run`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{AbiMode, ModuleConfig};

use super::gpu::GpuSelection;
use super::image::ImageFs;
use super::InjectError;

/// The tmpfs the launcher provides inside the container for what the image
/// lacks: `lib/` (added libraries), `bin/` (module programs), `etc/`
/// (the generated loader config and cache).
pub const SHOAL_DIR: &str = "/.shoal";

/// What the ABI check is asked.
pub struct Request<'a> {
    /// Selected modules, in order ([`super::select_modules`]).
    pub modules: Vec<(&'a str, &'a ModuleConfig)>,
    /// `[injection] abi`; a module's own `abi` overrides it.
    pub default_abi: AbiMode,
    /// The job's `CUDA_VISIBLE_DEVICES` on the host.
    pub cuda_visible_devices: Option<&'a str>,
    /// The host's tree (`DirImage::new("/")`): every host read of the check
    /// goes through it (the modules' globs, host libraries and their
    /// dependencies, mount sources, device nodes), so tests can stand in a
    /// made-up host.
    pub host: &'a dyn ImageFs,
    /// The program the job runs, inside the image, when known: copies of a
    /// library in its RUNPATH (an rpath set by MPI compiler wrappers or
    /// Spack) are found and covered as well.
    pub program: Option<&'a Path>,
}

/// What a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A host library (listed by the module, or a dependency of one).
    Library,
    /// A host program of the module.
    Program,
    /// A base-runtime library of the image (glibc, libstdc++, libgcc_s)
    /// whose versions were checked; never injected.
    Runtime,
}

/// The decision for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Bind the host file over the image's file.
    Replace,
    /// Bind the host file into the Shoal directory (the image has none).
    Add,
    /// The image's own copy is used (base runtime).
    UseImage,
    /// Not injectable: the whole module set is refused.
    Refuse,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Replace => "replace",
            Action::Add => "add",
            Action::UseImage => "use image",
            Action::Refuse => "REFUSE",
        })
    }
}

/// One row of the decision table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibraryDecision {
    pub module: String,
    pub kind: ObjectKind,
    /// SONAME (program name for programs).
    pub name: String,
    /// The SONAME or program that needed this library; None when the
    /// module lists it.
    pub needed_by: Option<String>,
    /// The real host file.
    pub host: Option<PathBuf>,
    pub host_version: Option<String>,
    /// The image's real file this row is about (what a bind covers).
    pub image: Option<PathBuf>,
    pub image_version: Option<String>,
    pub action: Action,
    /// Injected, but with a caveat the reason explains (relaxed mode).
    pub warning: bool,
    pub reason: String,
}

/// What a bind mount binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    File,
    Dir,
    Device,
}

/// A bind of a host path into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindMount {
    /// Host path (resolved, no symlinks).
    pub source: PathBuf,
    /// Container path, inside the image's root.
    pub target: PathBuf,
    pub kind: MountKind,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    /// False when the launcher must create the mount point (under the
    /// Shoal tmpfs, or where the image has no such path).
    pub target_in_image: bool,
    pub why: String,
}

/// One step of the plan, in the order the launcher must carry them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Mount a fresh tmpfs (mode 0755, nosuid, nodev, owned by the job's
    /// user) at `target`, creating the mount point; later steps bind into
    /// and write under it.
    Tmpfs {
        target: PathBuf,
    },
    Bind(BindMount),
    /// Write `contents` to a new file at container path `path` (on the tmpfs).
    WriteFile {
        path: PathBuf,
        contents: String,
    },
    /// Run `argv` inside the container root as the job's user, before the
    /// task starts; it must exit 0.
    RunInContainer {
        argv: Vec<String>,
        why: String,
    },
    /// Bind a container path over another one (ro, nosuid, nodev).
    BindWithin {
        source: PathBuf,
        target: PathBuf,
        target_in_image: bool,
        why: String,
    },
}

/// An environment change inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EnvChange {
    Set {
        name: String,
        value: String,
    },
    /// `name=entries[0]:entries[1]:...:$name` (just the entries when unset).
    Prepend {
        name: String,
        entries: Vec<String>,
    },
}

/// What the launcher carries out: only reachable from an assessment with
/// no refusal ([`Assessment::into_plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InjectionPlan {
    pub steps: Vec<Step>,
    pub env: Vec<EnvChange>,
    /// The GPUs bound, when a module has `gpu_devices`, with the numbering
    /// they have in a /dev holding them alone (the launcher applies it to
    /// its minimal /dev; see `container::add_injection`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSelection>,
}

/// The decision table and the plan it leads to.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    pub image: String,
    pub modules: Vec<String>,
    pub decisions: Vec<LibraryDecision>,
    /// The plan as it would be; usable only when nothing is refused.
    pub plan: InjectionPlan,
}

impl Assessment {
    pub fn refused(&self) -> impl Iterator<Item = &LibraryDecision> {
        self.decisions.iter().filter(|d| d.action == Action::Refuse)
    }

    /// The plan, or the refusals as one error naming every conflict.
    pub fn into_plan(self) -> Result<InjectionPlan, InjectError> {
        let mut details: Vec<String> = Vec::new();
        for d in self.refused() {
            if !details.contains(&d.reason) {
                details.push(d.reason.clone()); // one per cause, not per copy
            }
        }
        if details.is_empty() {
            Ok(self.plan)
        } else {
            Err(InjectError::Refused {
                image: self.image,
                modules: self.modules.join(","),
                details,
            })
        }
    }
}
