//! The image pipeline: from a registry reference to one squashfs file in the store.
//!
//! - [`convert`]: downloaded layer blobs (or a directory) to a squashfs file.

pub mod convert;
