//! A made-up tree for unit tests: an [`ImageFs`] held in memory, standing in
//! for an image or for the host (device nodes included, which a test cannot
//! create without root).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::image::{EntryKind, ImageFs};

enum Node {
    File(Vec<u8>),
    Dir,
    Link(PathBuf),
    Device,
}

/// Paths are absolute; adding one adds its parent directories.
pub(crate) struct MemImage {
    nodes: BTreeMap<PathBuf, Node>,
}

impl MemImage {
    pub(crate) fn new() -> MemImage {
        let mut nodes = BTreeMap::new();
        nodes.insert(PathBuf::from("/"), Node::Dir);
        MemImage { nodes }
    }

    fn add(mut self, path: &str, node: Node) -> MemImage {
        let path = Path::new(path);
        for dir in path.ancestors().skip(1) {
            self.nodes.entry(dir.to_path_buf()).or_insert(Node::Dir);
        }
        self.nodes.insert(path.to_path_buf(), node);
        self
    }

    pub(crate) fn file(self, path: &str, bytes: &[u8]) -> MemImage {
        self.add(path, Node::File(bytes.to_vec()))
    }

    pub(crate) fn dir(self, path: &str) -> MemImage {
        self.add(path, Node::Dir)
    }

    pub(crate) fn link(self, path: &str, target: &str) -> MemImage {
        self.add(path, Node::Link(target.into()))
    }

    pub(crate) fn device(self, path: &str) -> MemImage {
        self.add(path, Node::Device)
    }

    fn node(&self, path: &Path) -> io::Result<&Node> {
        self.nodes
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
}

impl ImageFs for MemImage {
    fn describe(&self) -> String {
        "made-up tree".into()
    }

    fn entry(&self, path: &Path) -> io::Result<EntryKind> {
        Ok(match self.node(path)? {
            Node::File(_) => EntryKind::File,
            Node::Dir => EntryKind::Dir,
            Node::Link(t) => EntryKind::Symlink(t.clone()),
            Node::Device => EntryKind::Device,
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let Node::Dir = self.node(dir)? else {
            return Err(io::Error::other("not a directory"));
        };
        Ok(self
            .nodes
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }

    fn read(&self, file: &Path) -> io::Result<Vec<u8>> {
        match self.node(file)? {
            Node::File(bytes) => Ok(bytes.clone()),
            _ => Err(io::Error::other("not a regular file")),
        }
    }
}
