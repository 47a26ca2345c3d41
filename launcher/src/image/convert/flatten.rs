//! The layer rules as pure logic: given the entries of each layer, top layer
//! first, decide which entry reaches the flattened image. No I/O here.
//!
//! Layers are read from the top down so that each one is decompressed once
//! and streamed straight into the writer: when a layer is read, everything
//! above it is already known, so an entry can be judged the moment it is
//! seen. What the layers above have claimed is kept per path ([`Claim`]);
//! only metadata is held, never file contents.
//!
//! Rules (OCI image spec, "Representing changes"):
//! - an upper entry replaces a lower one at the same path; two directories
//!   merge (the upper one's metadata wins, lower children stay);
//! - `.wh.NAME` hides the lower `NAME` (and all below it); `.wh..wh..opq`
//!   hides all lower children of its directory. Neither hides entries of its
//!   own layer;
//! - a lower directory replaced by a non-directory loses all its children;
//! - directories an unpacker creates on the way to an entry stay when the
//!   entry is later deleted (they come out empty, 0755 root:root).
//!
//! Paths are normalised lexically: a leading `/` and `.` components are
//! dropped (absolute names land inside the root, as every OCI unpacker does),
//! `..` is applied, and a `..` that would climb above the root is refused.
//! An entry beneath a path that a layer made a symlink (or any non-directory)
//! is refused, also when a higher layer replaces that path again: unpacking
//! tools would write through the symlink (Docker resolves it inside the root,
//! others escape it) or fail, and an image that relies on that is either
//! broken or hostile. The refusal names both entries. The one exception: an
//! entry that a higher layer hides entirely is not judged (nothing of it can
//! reach the image).
//!
//! The rules are checked against a naive unpacker (apply layers bottom up to
//! a map) on thousands of random layer stacks in the tests below.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A normalised path inside the image: components joined by `/`, no leading
/// `/`, never `.` or `..`; empty for the root.
pub type ImagePath = Vec<u8>;

/// What kind of thing a layer entry is, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A hard link to another entry (the raw, not yet normalised, target).
    HardLink(Vec<u8>),
    Fifo,
    /// Character and block devices: never placed in an image (mounts are
    /// nodev anyway; a device node in an image is at best useless).
    Device,
}

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write it now (regular files, symlinks, fifos).
    Emit(ImagePath),
    /// A directory whose metadata goes into the image; directories are
    /// written at the end (the writer fills in implicit parents meanwhile).
    Dir(ImagePath),
    /// A hard link to `target`, written at the end once the target is known
    /// to be in the image.
    Link { path: ImagePath, target: ImagePath },
    /// Not part of the image (hidden by an upper layer, a whiteout marker,
    /// a device node, the root's own entry).
    Skip,
}

/// Why an entry was refused. The caller adds the layer digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlattenError {
    #[error("`..` climbs out of the image root")]
    Escapes,
    #[error("it lies beneath `{parent}`, which {layer_desc} made a {what}: writing through it is refused")]
    ThroughNonDir {
        parent: String,
        /// "this layer" or "layer N" (bottom-first index).
        layer_desc: String,
        what: &'static str,
    },
    #[error("`{path}` is a {what} here, and layer {upper} writes `{child}` beneath it without replacing it: writing through a {what} is refused")]
    UnderUpper {
        what: &'static str,
        path: String,
        /// The higher layer: its bottom-first index, or its digest once
        /// [`FlattenError::name_layers`] ran.
        upper: String,
        child: String,
    },
    #[error("the layer holds `{0}` twice")]
    Duplicate(String),
    #[error("hard link to `{target}`, which is not in the image as a file")]
    LinkTarget { target: String },
    #[error(
        "hard link to `{target}`, which layer {upper} replaces: the link would see the wrong file"
    )]
    LinkTargetReplaced { target: String, upper: String },
}

impl FlattenError {
    /// Replaces layer indices in the message by names (digests).
    pub fn name_layers(self, name: impl Fn(usize) -> String) -> Self {
        let rename = |s: String| s.parse().map(&name).unwrap_or(s);
        match self {
            FlattenError::UnderUpper {
                what,
                path,
                upper,
                child,
            } => FlattenError::UnderUpper {
                what,
                path,
                upper: rename(upper),
                child,
            },
            FlattenError::LinkTargetReplaced { target, upper } => {
                FlattenError::LinkTargetReplaced {
                    target,
                    upper: rename(upper),
                }
            }
            e => e,
        }
    }
}

/// What the layers above the current one did to a path, as seen from below.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// A directory is here. `opaque`: lower children are hidden. `meta_set`:
    /// a lower entry at this very path is hidden (an upper layer gave the
    /// directory its metadata, or deleted what was below). `via`: when not
    /// `meta_set`, the layer and entry that implied the directory.
    Dir {
        opaque: bool,
        meta_set: bool,
        via: Option<(usize, ImagePath)>,
    },
    /// A non-directory or a whiteout is here: everything below it is hidden.
    Gone,
}

/// What the current layer did to a path (whiteouts do not apply to the
/// layer's own entries, so these are kept apart until the layer ends).
#[derive(Debug, Clone, Default)]
struct Own {
    kind: Option<OwnKind>,
    whiteout: bool,
    opaque: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnKind {
    /// Explicit directory entry.
    Dir,
    /// Parent of some entry of this layer, named `child`.
    ImpliedDir {
        child: ImagePath,
    },
    NonDir {
        what: &'static str,
    },
}

/// Rules state across layers. Feed layers top first: [`begin_layer`],
/// [`entry`] for each tar entry in order, [`end_layer`]; then [`finish`].
///
/// [`begin_layer`]: Flattener::begin_layer
/// [`entry`]: Flattener::entry
/// [`end_layer`]: Flattener::end_layer
/// [`finish`]: Flattener::finish
#[derive(Default)]
pub struct Flattener {
    upper: HashMap<ImagePath, Claim>,
    own: HashMap<ImagePath, Own>,
    /// Bottom-first index of the layer being read.
    layer: usize,
    /// Paths written as non-directories, with the layer they came from.
    emitted: HashMap<ImagePath, usize>,
    /// Directories whose metadata goes in, with their layer.
    dirs: BTreeMap<ImagePath, usize>,
    /// Directories with no entry of their own that must exist although
    /// nothing written lies in them (see `keep_parents`).
    implied: BTreeSet<ImagePath>,
    links: Vec<(usize, ImagePath, ImagePath)>,
}

/// The hard links to write at the end, validated: `(path, target)`, where
/// the target is a path written as a non-directory.
pub type Links = Vec<(ImagePath, ImagePath)>;

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// Normalises a tar path lexically (see the module doc).
pub fn normalise(raw: &[u8]) -> Result<ImagePath, FlattenError> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop().ok_or(FlattenError::Escapes)?;
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join(&b'/'))
}

/// The proper ancestors of `p`, root excluded, outermost first.
fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(move |(i, _)| &p[..i])
}

fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&p[..0], p),
    }
}

fn join(dir: &[u8], name: &[u8]) -> ImagePath {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn what(kind: &Kind) -> &'static str {
    match kind {
        Kind::Dir => "directory",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::HardLink(_) => "hard link",
        Kind::Fifo => "fifo",
        Kind::Device => "device node",
    }
}

impl Flattener {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the layer with bottom-first index `index`.
    pub fn begin_layer(&mut self, index: usize) {
        self.layer = index;
        self.own.clear();
    }

    /// Judges one entry of the current layer.
    pub fn entry(&mut self, raw: &[u8], kind: &Kind) -> Result<Decision, FlattenError> {
        let path = normalise(raw)?;
        let (dir, name) = split_last(&path);
        if name.starts_with(b".wh.") {
            let dir = dir.to_vec();
            self.check_own_parents(&path)?;
            self.imply_parents(&path);
            if name == b".wh..wh..opq" {
                self.own.entry(dir).or_default().opaque = true;
            } else if name.starts_with(b".wh..wh.") {
                // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content.
            } else {
                let target = &name[4..];
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(FlattenError::Escapes);
                }
                self.own.entry(join(&dir, target)).or_default().whiteout = true;
            }
            return Ok(Decision::Skip);
        }
        if path.is_empty() {
            // The root's own entry (`./`): the writer's root stays 0755 root.
            return Ok(Decision::Skip);
        }
        self.check_own_parents(&path)?;
        self.check_own_duplicate(&path, kind)?;
        let visible = self.visible(&path, kind)?;
        self.imply_parents(&path);
        let own = self.own.entry(path.clone()).or_default();
        own.kind = Some(match kind {
            Kind::Dir => OwnKind::Dir,
            k => OwnKind::NonDir { what: what(k) },
        });
        if !visible || *kind == Kind::Device {
            // An unpacker made this entry's parents before the entry was
            // deleted (or, for a device, dropped): those that stay visible
            // stay in the image, empty if need be.
            self.keep_parents(&path);
        }
        if !visible {
            return Ok(Decision::Skip);
        }
        Ok(match kind {
            Kind::Dir => {
                self.dirs.insert(path.clone(), self.layer);
                Decision::Dir(path)
            }
            Kind::Device => Decision::Skip,
            Kind::HardLink(target) => {
                let target = normalise(target)?;
                self.links.push((self.layer, path.clone(), target.clone()));
                Decision::Link { path, target }
            }
            Kind::File | Kind::Symlink | Kind::Fifo => {
                self.emitted.insert(path.clone(), self.layer);
                Decision::Emit(path)
            }
        })
    }

    /// Refuses an entry beneath a non-directory of this same layer.
    fn check_own_parents(&self, path: &[u8]) -> Result<(), FlattenError> {
        for a in ancestors(path) {
            if let Some(Own {
                kind: Some(OwnKind::NonDir { what }),
                ..
            }) = self.own.get(a)
            {
                return Err(FlattenError::ThroughNonDir {
                    parent: show(a),
                    layer_desc: "this layer".into(),
                    what,
                });
            }
        }
        Ok(())
    }

    /// A path twice in one layer: directories merge (the later wins), any
    /// other pair is refused, since the first one is already written.
    fn check_own_duplicate(&self, path: &[u8], kind: &Kind) -> Result<(), FlattenError> {
        match self.own.get(path).and_then(|o| o.kind.as_ref()) {
            None => Ok(()),
            Some(OwnKind::Dir) if *kind == Kind::Dir => Ok(()),
            Some(OwnKind::ImpliedDir { .. }) if *kind == Kind::Dir => Ok(()),
            Some(OwnKind::ImpliedDir { child }) => Err(FlattenError::ThroughNonDir {
                parent: show(path),
                layer_desc: format!("this layer (after `{}`)", show(child)),
                what: what(kind),
            }),
            Some(_) => Err(FlattenError::Duplicate(show(path))),
        }
    }

    fn imply_parents(&mut self, path: &[u8]) {
        for a in ancestors(path) {
            let own = self.own.entry(a.to_vec()).or_default();
            if own.kind.is_none() {
                own.kind = Some(OwnKind::ImpliedDir {
                    child: path.to_vec(),
                });
            }
        }
    }

    fn keep_parents(&mut self, path: &[u8]) {
        for a in ancestors(path) {
            if self.dirs.contains_key(a) || self.implied.contains(a) {
                continue;
            }
            if !matches!(self.visible(a, &Kind::Dir), Ok(true)) {
                break;
            }
            self.implied.insert(a.to_vec());
        }
    }

    /// Whether the layers above leave this entry in the image.
    fn visible(&self, path: &[u8], kind: &Kind) -> Result<bool, FlattenError> {
        for a in ancestors(path) {
            match self.upper.get(a) {
                Some(Claim::Gone) | Some(Claim::Dir { opaque: true, .. }) => return Ok(false),
                _ => {}
            }
        }
        match self.upper.get(path) {
            None => Ok(true),
            Some(Claim::Gone) => Ok(false),
            // A layer above put entries beneath this path without replacing
            // what was here: over a non-directory that is a write through it,
            // even if a layer higher still replaced the path later.
            Some(Claim::Dir {
                via: Some((upper, child)),
                ..
            }) if *kind != Kind::Dir => Err(FlattenError::UnderUpper {
                what: what(kind),
                path: show(path),
                upper: upper.to_string(),
                child: show(child),
            }),
            Some(Claim::Dir { meta_set, .. }) => Ok(!meta_set),
        }
    }

    /// Ends the current layer: its claims join those of the layers above.
    pub fn end_layer(&mut self) {
        let layer = self.layer;
        for (path, own) in std::mem::take(&mut self.own) {
            let mine = match &own.kind {
                Some(OwnKind::Dir) => Claim::Dir {
                    opaque: own.opaque || own.whiteout,
                    meta_set: true,
                    via: None,
                },
                Some(OwnKind::ImpliedDir { child }) => Claim::Dir {
                    opaque: own.opaque || own.whiteout,
                    meta_set: own.whiteout,
                    // With a whiteout here the layer cleared the path first.
                    via: (!own.whiteout).then(|| (layer, child.clone())),
                },
                Some(OwnKind::NonDir { .. }) => Claim::Gone,
                None if own.whiteout => Claim::Gone,
                // An opaque marker alone: its directory is implied.
                None => Claim::Dir {
                    opaque: own.opaque,
                    meta_set: false,
                    via: Some((layer, join(&path, b".wh..wh..opq"))),
                },
            };
            let resolves = own.whiteout || matches!(own.kind, Some(OwnKind::Dir));
            let merged = match (self.upper.remove(&path), mine) {
                (None, m) => m,
                (Some(Claim::Gone), _) => Claim::Gone,
                (
                    Some(Claim::Dir {
                        opaque,
                        meta_set,
                        via,
                    }),
                    Claim::Dir {
                        opaque: o2,
                        meta_set: m2,
                        via: v2,
                    },
                ) => Claim::Dir {
                    opaque: opaque || o2,
                    meta_set: meta_set || m2,
                    // A pending "entries beneath, nothing replaced" from
                    // above is settled by this layer's explicit directory or
                    // whiteout; otherwise it stays pending for lower layers.
                    via: if resolves { None } else { via.or(v2) },
                },
                // A non-directory here under a pending upper directory was
                // refused by `visible`; a whiteout settles it: layers below
                // see neither this path nor its children.
                (Some(Claim::Dir { .. }), Claim::Gone) => Claim::Dir {
                    opaque: true,
                    meta_set: true,
                    via: None,
                },
            };
            self.upper.insert(path, merged);
        }
    }

    /// After the bottom layer: the directories to write (parents first; those
    /// without a [`Decision::Dir`] get default metadata) and the hard links,
    /// checked against what was written.
    pub fn finish(self) -> Result<(Vec<ImagePath>, Links), (usize, ImagePath, FlattenError)> {
        let mut links = Vec::with_capacity(self.links.len());
        let targets: HashMap<&ImagePath, &ImagePath> =
            self.links.iter().map(|(_, p, t)| (p, t)).collect();
        for (layer, path, target) in &self.links {
            // Follow links to links down to the written file.
            let mut t = target;
            let mut hops = 0;
            while let Some(next) = targets.get(t) {
                t = next;
                hops += 1;
                if hops > self.links.len() {
                    break;
                }
            }
            match self.emitted.get(t) {
                None => {
                    return Err((
                        *layer,
                        path.clone(),
                        FlattenError::LinkTarget {
                            target: show(target),
                        },
                    ))
                }
                Some(&from) if from > *layer => {
                    return Err((
                        *layer,
                        path.clone(),
                        FlattenError::LinkTargetReplaced {
                            target: show(target),
                            upper: from.to_string(),
                        },
                    ))
                }
                Some(_) => links.push((path.clone(), t.clone())),
            }
        }
        let mut dirs: BTreeSet<ImagePath> = self.dirs.into_keys().collect();
        dirs.extend(self.implied);
        Ok((dirs.into_iter().collect(), links))
    }
}

#[cfg(test)]
#[path = "flatten_tests.rs"]
mod tests;
