//! What the launcher tells the image server of the command it will exec,
//! for the server to read ahead (`image_server::readahead`); sent through
//! the early server's socket (`fuse.rs`). Plain data, always built:
//! `rootfs.rs` computes it whether or not this binary has the built-in
//! server (the `image-server` feature).

/// What the launcher knows of the command it will exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `argv[0]`: a path, or a name looked up in `path`.
    pub program: Vec<u8>,
    /// The container's `PATH`.
    pub path: Vec<u8>,
    /// The container's `LD_LIBRARY_PATH`.
    pub library_path: Vec<u8>,
}

#[cfg_attr(not(feature = "image-server"), allow(dead_code))]
impl Hints {
    /// The hints as bytes for the early server's socket: the three fields,
    /// NUL-separated (none can hold a NUL: they are C strings).
    pub fn encode(&self) -> Vec<u8> {
        [&self.program[..], &self.path, &self.library_path].join(&0u8)
    }

    pub fn decode(bytes: &[u8]) -> Hints {
        let mut f = bytes.split(|b| *b == 0).map(<[u8]>::to_vec);
        Hints { program: f.next().unwrap_or_default(), path: f.next().unwrap_or_default(), library_path: f.next().unwrap_or_default() }
    }
}
