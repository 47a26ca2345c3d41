//! Host library injection: decides, per library, whether a site's host copy
//! (tuned MPI, the GPU driver that must match the kernel module) can replace
//! or join the image's, and turns the answer into a plan of mounts.
//!
//! This module decides; it never mounts, never writes into an image, and
//! never runs anything. The launcher carries out an [`InjectionPlan`] inside
//! the job's mount namespace; `shoal abi-check` and `--dry-run` print it.
//!
//! # Deciding
//! For every host library of the selected modules ([`select_modules`]):
//! its SONAME, DT_NEEDED and symbol-version needs are read from the ELF
//! ([`elf`]); the image's counterpart is found by scanning the image's
//! library directories ([`discover`], through the read-only [`ImageFs`], so a
//! squashfs needs no mount). The rule ([`version`]): same SONAME major
//! required; host minor >= image minor is a full match; strict mode wants
//! equal minors; the image's copy must define no symbol version the host's
//! lacks; no counterpart: the library is added. Its non-glibc dependencies
//! come along under the same rule. The base runtime (glibc's libraries,
//! `ld-linux`, `libstdc++`, `libgcc_s`) is never injected: the host
//! library's version needs (`GLIBC_2.34`) must be met by the versions the
//! image's own copies define, or the library is refused.
//!
//! # Injecting: bind over the image's files, new libraries in a Shoal directory
//! A library the image already has is replaced by binding the host file over
//! the image's real file, at every place the scan found one. The alternative,
//! a directory searched first (through a generated loader cache), does not
//! come first at all: glibc's loader looks at DT_RPATH, `LD_LIBRARY_PATH` and
//! DT_RUNPATH before the cache, so an image that sets `LD_LIBRARY_PATH` or an
//! application linked with an rpath (MPI compiler wrappers, Spack) would
//! still load the image's own library. A bind over the file wins whichever
//! way the loader goes, also for a copy under an unusual directory
//! (`/opt/mpich/lib`), because every path now leads to the host's bytes.
//! Copies are looked for in every directory the loader can use: the default
//! and multiarch directories with their `glibc-hwcaps` subdirectories,
//! ld.so.conf, the image's cache, and the job's program's RUNPATH when the
//! caller names the program ([`Request::program`]).
//!
//! A library with no counterpart has nothing to compete with, so it only
//! has to be findable: it is bound into `/.shoal/lib` (a tmpfs), and the
//! image's own `ldconfig` writes a cache whose first directory is
//! `/.shoal/lib`, which is then bound over `/etc/ld.so.cache`. The image's
//! `ldconfig` rather than a cache written here, because the cache format and
//! its lookup order (entry sorting, hwcap subdirectories, format versions)
//! belong to the image's glibc: its own `ldconfig` writes exactly what its own
//! loader reads. It costs one short run per container setup, as the user,
//! inside the container. Nothing depends on `LD_LIBRARY_PATH`, and the image
//! file is never modified: everything is mounts in the job's namespace, and
//! the generated files live on the tmpfs.
//!
//! # Carrying a plan out (the launcher's side)
//! `container::add_injection` makes the plan part of the container's plan
//! (tmpfs and binds as ordinary mounts, the rest as setup steps run after
//! pivot_root by the container's builder; see `container/inject.rs`).
//! [`InjectionPlan::steps`] are in order; each says what it needs:
//! - [`Step::Tmpfs`]: a tmpfs (0755, nosuid, nodev) at `/.shoal`, owned by
//!   the job's user (the ldconfig step writes `/.shoal/etc` as the user); the
//!   image has no such directory, so the container root must accept a new
//!   mount point (tmpfs root or overlay; the image file stays untouched).
//! - [`Step::Bind`]: bind `source` (host, resolved) onto `target` (inside
//!   the container root, already resolved inside the image, so it must be
//!   opened without following symlinks out of the root), then remount the
//!   bind with the flags given. `target_in_image == false`: create the mount
//!   point (an empty file or directory) first.
//! - [`Step::WriteFile`]: a new file on the tmpfs.
//! - [`Step::RunInContainer`]: run `argv` with the container root as `/`,
//!   as the user, no_new_privs, before the task; fail the launch unless it
//!   exits 0 (it is the image's ldconfig writing `/.shoal/etc/ld.so.cache`).
//! - [`Step::BindWithin`]: bind one container path over another.
//!
//! [`InjectionPlan::env`] applies on top of the image's environment.
//!
//! # Must never
//! Run as root on the image: [`assess`] reads the user's image (squashfs
//! parsing, symlinks of an unpacked tree), which needs no privilege, so it
//! runs with the user's credentials. Never mount or write anything here;
//! never inject the base runtime; never use `LD_LIBRARY_PATH` or `LD_PRELOAD`.

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

mod decide;
mod devices;
pub mod discover;
pub mod elf;
pub mod gpu;
pub mod image;
#[cfg(test)]
pub(crate) mod mem_image;
pub mod plan;
pub mod recorded;
mod render;
mod runtime;
pub mod select;
mod steps;
pub mod version;

pub use gpu::{names_gpus, select_gpus, visible_inside, GpuDevice, GpuSelection, TaskGpus};
pub use image::{DirImage, ImageFs, SquashfsImage};
pub use decide::assess;
pub use plan::{Assessment, BindMount, EnvChange, InjectionPlan, MountKind, Request, Step};
pub use render::render_table;
pub use select::select_modules;

/// Why a module cannot be used; every message names the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// Selection or module config problem.
    #[error("{0}")]
    Module(String),
    /// A host file named by a module is unusable.
    #[error("{path}: {message}")]
    Host {
        path: std::path::PathBuf,
        message: String,
    },
    /// The image cannot be read.
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("{0}")]
    Gpu(String),
    /// The ABI check refused one or more libraries.
    #[error("image {image} cannot take module {modules}: {}", details.join("; "))]
    Refused {
        image: String,
        modules: String,
        details: Vec<String>,
    },
}

#[cfg(test)]
mod tests;
