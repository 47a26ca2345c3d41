//! Keeps true what `launcher/src/container/mod.rs` says of `unsafe`: every
//! `unsafe` block of the launcher is in `container/sys.rs`, but the forks
//! only their caller can justify and unit tests that call libc directly.
//! A new `unsafe` elsewhere fails here: move the raw call into `sys` behind
//! a safe function, or (a fork's caller) add it below and to that note.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files of `launcher/src` allowed `unsafe` outside `container/sys.rs`,
/// with how many times the word may appear in code (not comments).
const ALLOWED: &[(&str, usize)] = &[
    // `sys::double_fork` in `prefork` and `start`.
    ("cli/run_save.rs", 1),
    ("container/fuse.rs", 2),
    // The fork of `run_as_user`, and a test trying to take root back.
    ("container/isolate.rs", 2),
    // std's `Command::pre_exec`.
    ("container/setup.rs", 1),
    // Unit tests probing xattrs.
    ("container/image_server/tests/mod.rs", 2),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A line without its string literals (`"..."`, on one line) and comment.
fn code_of(line: &str) -> String {
    let (mut out, mut in_str, mut escaped) = (String::new(), false, false);
    for (i, c) in line.char_indices() {
        if in_str {
            in_str = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_str = true;
        } else if line[i..].starts_with("//") {
            break;
        } else {
            out.push(c);
        }
    }
    out
}

/// Occurrences of the keyword `unsafe` in code: comments, strings and the
/// `forbid(unsafe_code)` attribute do not count, nor do words such as
/// `unsafe_dir` (only whole words are counted).
fn unsafe_in_code(text: &str) -> usize {
    text.lines()
        .map(|l| code_of(l).split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| *w == "unsafe").count())
        .sum()
}

#[test]
fn the_launchers_unsafe_is_in_container_sys() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("launcher/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let n = unsafe_in_code(&std::fs::read_to_string(&f).unwrap());
        if n > 0 && rel != "container/sys.rs" {
            found.insert(rel, n);
        }
    }
    let allowed: BTreeMap<String, usize> = ALLOWED.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    assert!(found.contains_key("container/fuse.rs"), "the count finds nothing: {found:?}");
    assert_eq!(found, allowed, "`unsafe` outside container/sys.rs (file: count) differs from the list in container/mod.rs");
}
