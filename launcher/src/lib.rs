//! Shoal's library: everything the `shoal` command and the SPANK plugin share.
//!
//! The modules follow an image's life on a cluster:
//! - [`reference`]: what the user typed (`--image=...`), parsed once into types;
//! - [`config`]: the site's TOML settings, read by the command and the plugin alike;
//! - [`stage`]: the node-local image cache each compute node stages into;
//! - [`inject`]: which host libraries, programs and devices a job gets (ABI check and plan).
//!
//! Nothing in here needs root, and nothing here is setuid: the code that runs
//! in slurmstepd as root calls the same functions with the user's credentials.

pub mod config;
pub mod image;
pub mod inject;
pub mod reference;
pub mod stage;
pub mod container;

pub use config::Config;
pub use reference::{Digest, ImageRef, ImageSpec};
