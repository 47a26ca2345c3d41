//! Shoal's library: everything the `shoal` command and the SPANK plugin share.
//!
//! The modules follow an image's life on a cluster:
//! - [`reference`]: what the user typed (`--image=...`), parsed once into types;
//! - [`config`]: the site's TOML settings, read by the command and the plugin alike;
//! - [`container`]: the launcher, from a plan (pure data) to a process inside
//!   the image (`shoal run`, and the plugin's per-task entry).
//!
//! Nothing in here needs root, and nothing here is setuid: the code that runs
//! in slurmstepd as root calls the same functions with the user's credentials.

pub mod config;
pub mod reference;
pub mod container;

pub use config::Config;
pub use reference::{Digest, ImageRef, ImageSpec};
