//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off in
//! every normal build): the parsers of untrusted bytes that are private to
//! their modules, driven the way the real callers drive them. Each returns
//! normally on any input; a panic, a hang or an allocation that does not
//! fit is a bug the fuzzer reports.

use std::io::{Read, Write};

use crate::container::image_server::squashfs::{Archive, Kind};
use crate::image::convert::flatten::{Decision, Flattener, Kind as EntryKind};

/// Walks a squashfs image as the image server would serve it: every
/// directory from the root (at most `budget` entries), every inode looked
/// up by name, symlink targets, file block lists and the first bytes of
/// every file.
pub fn squashfs(bytes: &[u8]) {
    let Ok(mut file) = tempfile::tempfile() else { return };
    if file.write_all(bytes).is_err() {
        return;
    }
    let Ok(mut a) = Archive::open(file) else { return };
    let mut budget = 4096usize;
    let mut stack = vec![a.root()];
    let mut seen = std::collections::HashSet::new();
    while let Some(r) = stack.pop() {
        if !seen.insert(r) {
            continue;
        }
        let Ok(inode) = a.inode(r) else { continue };
        match &inode.kind {
            Kind::Dir { .. } => {
                let Ok(entries) = a.dir(r, &inode) else { continue };
                for e in entries.iter() {
                    if budget == 0 {
                        return;
                    }
                    budget -= 1;
                    let _ = a.lookup(r, &inode, &e.name);
                    stack.push(e.inode_ref);
                }
            }
            Kind::File(f) => {
                if let Ok(layout) = a.layout(f) {
                    let mut out = Vec::new();
                    let _ = a.read(&layout, 0, 1 << 16, &mut out);
                    let _ = a.read(&layout, layout.size.saturating_sub(100), 200, &mut out);
                }
            }
            _ => {
                let _ = (inode.st_mode(), inode.size(), inode.rdev());
            }
        }
    }
}

/// Judges layers as the converter does: each `layers[i]` an uncompressed
/// tar, given top layer first; entries are read with the `tar` crate and
/// fed to the layer rules, then the links are resolved.
pub fn layers(layers: &[&[u8]]) {
    let mut flat = Flattener::new();
    for (i, layer) in layers.iter().enumerate() {
        flat.begin_layer(layers.len() - 1 - i);
        let mut archive = tar::Archive::new(*layer);
        let Ok(entries) = archive.entries() else { return };
        for entry in entries {
            let Ok(mut e) = entry else { return };
            let raw = e.path_bytes().into_owned();
            use tar::EntryType as T;
            let kind = match e.header().entry_type() {
                T::Regular | T::Continuous => EntryKind::File,
                T::Directory => EntryKind::Dir,
                T::Symlink => EntryKind::Symlink,
                T::Link => match e.link_name_bytes() {
                    Some(l) => EntryKind::HardLink(l.into_owned()),
                    None => return,
                },
                T::Fifo => EntryKind::Fifo,
                T::Char | T::Block => EntryKind::Device,
                _ => continue,
            };
            match flat.entry(&raw, &kind) {
                Ok(Decision::Emit(_)) => {
                    let _ = std::io::copy(&mut (&mut e).take(1 << 20), &mut std::io::sink());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        flat.end_layer();
    }
    let _ = flat.finish();
}

/// Reads a squashfs image as the ABI check does in slurmstepd (`backhand`
/// through [`crate::inject::image::open`]): opens it, lists directories
/// from the root (at most 256 entries) and reads every file found.
pub fn abi_squashfs(bytes: &[u8]) {
    use crate::inject::image::EntryKind;
    let Ok(mut file) = tempfile::NamedTempFile::new() else { return };
    if file.write_all(bytes).is_err() {
        return;
    }
    let Ok(image) = crate::inject::image::open(file.path()) else { return };
    let mut budget = 256usize;
    let mut dirs = vec![std::path::PathBuf::from("/")];
    while let Some(dir) = dirs.pop() {
        let Ok(names) = image.list(&dir) else { continue };
        for n in names {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let p = dir.join(n);
            match image.entry(&p) {
                Ok(EntryKind::Dir) => dirs.push(p),
                Ok(_) => {
                    let _ = image.read(&p);
                }
                Err(_) => {}
            }
        }
    }
}
