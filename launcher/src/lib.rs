//! Shoal's library: everything the `shoal` command and the SPANK plugin share.
//!
//! The modules follow an image's life on a cluster:
//! - [`reference`]: what the user typed (`--image=...`), parsed once into types;
//! - [`config`]: the site's TOML settings, read by the command and the plugin alike
//!   (with [`mount_spec`], the `SRC:DST[:ro]` bind syntax it shares with the launcher);
//! - [`image`]: pull or import an image into a content-addressed squashfs store;
//! - [`resolve`]: from a name or path to the image the launcher runs;
//! - [`select`]: which entry of an image index a node runs (CPU, GPU, MPI);
//! - [`stage`]: the node-local image cache each compute node stages into;
//! - [`inject`]: which host libraries, programs and devices a job gets (ABI check and plan);
//! - [`container`]: the plan of a container and carrying it out (`shoal run`, every task).
//!
//! Nothing in here needs root, and nothing here is setuid: the code that runs
//! in slurmstepd as root calls the same functions with the user's credentials.

pub mod config;
pub mod container;
pub mod image;
pub mod inject;
pub mod mount_spec;
pub mod reference;
pub mod resolve;
pub mod save;
pub mod select;
pub mod stage;
/// Entry points for the fuzz targets in `fuzz/` (see SECURITY.md).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use config::Config;
pub use reference::{Digest, ImageRef, ImageSpec};
