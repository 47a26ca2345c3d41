//! The image pipeline: from a registry (or a local file) to one verified
//! squashfs file per image in a content-addressed store, ready for every node.
//!
//! - [`registry`]: the OCI distribution client (auth, TLS, mirrors, retries);
//! - [`manifest`], [`platform`]: the registry's documents as plain values;
//! - [`convert`]: downloaded layer blobs (or a directory) to a squashfs file;
//! - [`store`]: where images live, how they are published atomically, found
//!   by the launcher and the SPANK plugin, and collected;
//! - [`superblock`]: the one parser of a squashfs superblock (converter,
//!   import, the launcher's image server);
//! - [`pull`]: download -> convert -> publish, as one call;
//! - [`trust`]: the site image policy (containers-policy.json) and cosign
//!   signatures, checked at pull, submission and staging;
//! - [`import`]: the same for local sources (OCI layout, docker-archive,
//!   a directory, a squashfs file);
//! - [`file`]: opening an image file a user named, refusing FIFOs and
//!   devices before a byte is read;
//! - [`trailer`]: the run settings a saved container keeps in its file;
//! - [`verity`]: the hash tree a store image is checked against as it is
//!   read where it lies (`node.staging = "in-place"`).

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

pub mod convert;
pub mod file;
pub mod import;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod registry;
pub mod store;
pub mod superblock;
pub mod trust;
pub mod trailer;
pub mod verity;
