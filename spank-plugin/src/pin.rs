//! The image a job is pinned to, decided once at submission and carried to
//! every node and step.
//!
//! srun/sbatch/salloc resolve `--image` to a digest and write this record to
//! the job's environment (`SHOAL_IMAGE_PIN`, inherited by every step, so a
//! nested srun skips the lookup and a moved tag changes nothing) and to the
//! job control environment (the prolog sees it as `SPANK_SHOAL_IMAGE_PIN`).
//!
//! The record comes from the user's side and is not trusted by root: for a
//! site image only the digest is used, and the node looks it up in the site
//! store itself; a user image is read with the user's own credentials and
//! cached apart from other users' (see `stage.rs`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
/// Which store the image was found in at submission (a squashfs file the
/// user named counts as theirs).
pub use shoal::image::store::Scope;

/// Name of the variable in the job environment.
pub const ENV: &str = "SHOAL_IMAGE_PIN";
/// Name given to `spank_job_control_setenv` (the prolog reads `SPANK_` + this).
pub const JOB_CONTROL_ENV: &str = "SHOAL_IMAGE_PIN";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// `--image` as the user wrote it (matched by nested steps).
    pub requested: String,
    /// Image digest; names the image everywhere. Checked when the pin is
    /// read: a pin with a malformed digest is refused as a whole.
    pub digest: shoal::Digest,
    pub scope: Scope,
    /// The squashfs file as resolved at submission.
    pub squashfs: PathBuf,
    /// Hex sha256 of the squashfs file, recorded when it was written.
    pub sha256: String,
    pub size: u64,
    /// The digest names an image index (`squashfs` is then the index
    /// file): each node chooses its entry from these bytes (`choose.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub index: bool,
    /// How the nodes choose from an index.
    #[serde(default)]
    pub select: shoal::select::SelectMode,
    /// The registry reference the site image policy judges the image by
    /// (none for imports and files). From the user, like all of the pin:
    /// a signature must bind it to the digest for root to accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The image's cosign signatures from the store, so every node can
    /// check them offline (`image::trust`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<shoal::image::trust::SignatureSet>,
    /// Root of a user-store image's hash tree (`image.verity` beside
    /// `squashfs`), for `node.staging = "in-place"`. From the user, like
    /// the rest: it only decides what the user's own server (as the user)
    /// checks the user's own file against. Site images take theirs from
    /// the site store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<String>,
}

impl Pin {
    /// A user-store image's tree, as pinned.
    pub fn user_verity(&self) -> Option<shoal::image::verity::Pinned> {
        let root = self.verity.clone()?;
        Some(shoal::image::verity::Pinned { file: self.squashfs.with_file_name(shoal::image::verity::FILE_NAME), root })
    }
}

impl Pin {
    pub fn to_env(&self) -> String {
        serde_json::to_string(self).expect("a Pin always serializes")
    }

    pub fn from_env(value: &str) -> Result<Pin, String> {
        serde_json::from_str(value)
            .map_err(|e| format!("${ENV} is not a Shoal image pin ({e}); unset it and resubmit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pin = Pin {
            requested: "127.0.0.1:5443/shoal/busybox".into(),
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            scope: Scope::User,
            squashfs: "/home/alice/.local/share/shoal/x.sqfs".into(),
            sha256: "b".repeat(64),
            size: 42,
            index: false,
            select: Default::default(),
            identity: Some("127.0.0.1:5443/shoal/busybox:latest".into()),
            signatures: Some(shoal::image::trust::SignatureSet::default()),
            verity: Some("c".repeat(64)),
        };
        assert_eq!(Pin::from_env(&pin.to_env()).unwrap(), pin);
    }

    #[test]
    fn garbage_is_refused_with_the_fix() {
        let e = Pin::from_env("nope").unwrap_err();
        assert!(e.contains("SHOAL_IMAGE_PIN") && e.contains("resubmit"), "{e}");
        let bad = r#"{"requested":"x","digest":"md5:1","scope":"site","squashfs":"/x","sha256":"","size":1}"#;
        assert!(Pin::from_env(bad).unwrap_err().contains("invalid digest"));
    }
}
