//! `shoal index`: an image index composed from images already in a
//! registry, one entry per image with its platform (os, architecture,
//! variant, features) and the annotations Shoal's selection reads
//! (`crate::select::index`), then pushed to a tag.
//!
//! The platform comes from each image's config (os, architecture, variant,
//! `os.version`, `os.features`); what the author gives overrides it. An
//! explicit `io.archspec.cpu.target` without a variant gets the variant of
//! the target's generic level (`skylake_avx512` is `v4`), so runtimes that
//! read only the variant see the level too. Every value is checked here
//! against what selection accepts, so an index never carries an annotation
//! that would refuse its own entry everywhere.
//!
//! Runtimes other than Shoal take the *first* entry of their platform. So,
//! per os/architecture, the plainest entry (no GPU, lowest CPU level and
//! target, fewest features, no MPI) must come first: where it does not, it
//! is moved there and a warning says so.
//!
//! The index is written once ([`render`]); those very bytes are printed by
//! `--dry-run` and pushed, and their sha256 is the digest.
//!
//! [`parse_entry`], [`read_spec`], [`resolve`], [`order`] and [`render`]
//! are pure; [`build`] and [`push`] talk to registries.
//!
//! By job: [`spec`] (the author's input), [`entry`] (one entry resolved),
//! [`index`] (order and the document), [`remote`] (build from the
//! registries, push).

pub mod entry;
pub mod index;
pub mod remote;
pub mod spec;

pub use self::entry::{image_config_digest, resolve, ComposeError, Platform, Resolved};
pub use self::index::{label, order, render};
pub use self::remote::{build, push, registry_ref, Built, Pushed};
pub use self::spec::{parse_entry, read_spec, EntrySpec, IndexSpec};

#[cfg(test)]
mod tests;
