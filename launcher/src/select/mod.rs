//! Which entry of an OCI image index a node runs: the best one for its CPU,
//! GPUs and the job's MPI, not the first one of its architecture.
//!
//! - [`cpu`]: a CPU as an archspec target, from `/proc/cpuinfo` text;
//! - [`capabilities`]: a node's facts (CPU, GPUs; cached, overridden per
//!   node by the site config) and a job's (the MPI of its modules);
//! - [`index`]: the selection itself, a pure function of (index bytes,
//!   capabilities, job request) that returns the chosen digest and every
//!   entry's verdict and score;
//! - [`resolve`]: a name to the image a node runs, through its index.
//!
//! Nothing here re-serializes an index: its fields are read from the raw
//! JSON the registry served, kept byte for byte in the store.

// Safe Rust only: `unsafe` belongs at the FFI edge (raw syscalls, the SPANK
// bindings), never in this module.
#![forbid(unsafe_code)]

pub mod capabilities;
pub mod cpu;
pub mod index;
pub mod resolve;

pub use capabilities::{JobRequest, NodeCapabilities};

/// How the nodes of a job choose from an index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectMode {
    /// Each node runs its own best entry.
    #[default]
    Node,
    /// Every node runs the best entry all of the job's nodes accept.
    Uniform,
}

impl std::str::FromStr for SelectMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SelectMode, String> {
        match s {
            "node" | "per-node" => Ok(SelectMode::Node),
            "uniform" => Ok(SelectMode::Uniform),
            other => Err(format!("{other:?}: want `node` (each node its best entry) or `uniform` (one entry every node accepts)")),
        }
    }
}
