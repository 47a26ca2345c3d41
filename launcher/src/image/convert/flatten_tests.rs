//! Unit tests of `flatten` (moved out of it to keep the file to one job).

use super::*;

/// Runs the rules over layers given bottom-first, each a list of
/// (path, kind); returns the image's paths with a kind letter, sorted.
fn flatten(layers: &[&[(&str, Kind)]]) -> Result<Vec<String>, String> {
    let mut f = Flattener::new();
    let mut out = Vec::new();
    for (i, layer) in layers.iter().enumerate().rev() {
        f.begin_layer(i);
        for (p, k) in layer.iter() {
            match f
                .entry(p.as_bytes(), k)
                .map_err(|e| format!("layer {i} {p}: {e}"))?
            {
                Decision::Emit(p) => out.push(format!("{} {}", show(&p), &what(k)[..1])),
                Decision::Link { path, .. } => out.push(format!("{} h", show(&path))),
                Decision::Dir(_) | Decision::Skip => {}
            }
        }
        f.end_layer();
    }
    let (dirs, _links) = f
        .finish()
        .map_err(|(l, p, e)| format!("layer {l} {}: {e}", show(&p)))?;
    out.extend(dirs.iter().map(|d| format!("{} d", show(d))));
    out.sort();
    Ok(out)
}
use Kind::*;

#[test]
fn normalises_lexically_and_refuses_escapes() {
    assert_eq!(normalise(b"./a//b/./c").unwrap(), b"a/b/c");
    assert_eq!(normalise(b"/etc/passwd").unwrap(), b"etc/passwd");
    assert_eq!(normalise(b"a/../b").unwrap(), b"b");
    assert_eq!(normalise(b"./").unwrap(), b"");
    assert_eq!(normalise(b"../x"), Err(FlattenError::Escapes));
    assert_eq!(normalise(b"a/../../x"), Err(FlattenError::Escapes));
    assert_eq!(normalise(b"/../x"), Err(FlattenError::Escapes));
}

#[test]
fn upper_file_replaces_lower() {
    let got = flatten(&[&[("a", Dir), ("a/f", File)], &[("a/f", File)]]).unwrap();
    assert_eq!(got, ["a d", "a/f f"]);
}

#[test]
fn whiteout_hides_lower_entry_and_its_children() {
    let got = flatten(&[
        &[
            ("a", Dir),
            ("a/f", File),
            ("a/g", File),
            ("d", Dir),
            ("d/x", File),
        ],
        &[("a/.wh.f", File), (".wh.d", File)],
    ])
    .unwrap();
    assert_eq!(got, ["a d", "a/g f"]);
}

#[test]
fn whiteout_does_not_hide_its_own_layer() {
    let got = flatten(&[&[("f", File)], &[(".wh.f", File), ("f", Symlink)]]).unwrap();
    assert_eq!(got, ["f s"]);
    // ...and a directory next to its own whiteout starts empty.
    let got = flatten(&[
        &[("d", Dir), ("d/old", File)],
        &[("d", Dir), (".wh.d", File), ("d/new", File)],
    ])
    .unwrap();
    assert_eq!(got, ["d d", "d/new f"]);
}

#[test]
fn opaque_dir_hides_lower_children_only() {
    let got = flatten(&[
        &[
            ("d", Dir),
            ("d/old", File),
            ("d/sub", Dir),
            ("d/sub/x", File),
            ("e", File),
        ],
        &[("d", Dir), ("d/.wh..wh..opq", File), ("d/new", File)],
    ])
    .unwrap();
    assert_eq!(got, ["d d", "d/new f", "e f"]);
    // The marker may come after the layer's own children.
    let got = flatten(&[
        &[("d/old", File)],
        &[("d/new", File), ("d/.wh..wh..opq", File)],
    ])
    .unwrap();
    assert_eq!(got, ["d d", "d/new f"]);
}

#[test]
fn three_layers_whiteout_then_recreate() {
    // Layer 1 deletes d, layer 2 recreates it: layer 0's children stay hidden.
    let got = flatten(&[
        &[("d", Dir), ("d/zero", File)],
        &[(".wh.d", File)],
        &[("d", Dir), ("d/two", File)],
    ])
    .unwrap();
    assert_eq!(got, ["d d", "d/two f"]);
}

#[test]
fn file_replaced_by_dir_and_dir_by_file() {
    let got = flatten(&[
        &[("x", File), ("y", Dir), ("y/child", File)],
        &[("x", Dir), ("x/inside", File), ("y", File)],
    ])
    .unwrap();
    assert_eq!(got, ["x d", "x/inside f", "y f"]);
}

#[test]
fn dir_replaced_by_file_then_dir_again_hides_bottom_children() {
    let got = flatten(&[
        &[("y", Dir), ("y/bottom", File)],
        &[("y", File)],
        &[("y", Dir), ("y/top", File)],
    ])
    .unwrap();
    assert_eq!(got, ["y d", "y/top f"]);
}

#[test]
fn directories_merge_and_the_upper_one_wins() {
    let mut f = Flattener::new();
    f.begin_layer(1);
    assert_eq!(f.entry(b"d/", &Dir).unwrap(), Decision::Dir(b"d".to_vec()));
    f.end_layer();
    f.begin_layer(0);
    assert_eq!(f.entry(b"d", &Dir).unwrap(), Decision::Skip);
    assert_eq!(
        f.entry(b"d/f", &File).unwrap(),
        Decision::Emit(b"d/f".to_vec())
    );
    f.end_layer();
    let (dirs, _) = f.finish().unwrap();
    assert_eq!(dirs, [b"d".to_vec()]);
}

#[test]
fn implied_upper_dir_takes_lower_metadata() {
    let mut f = Flattener::new();
    f.begin_layer(1);
    f.entry(b"d/f", &File).unwrap();
    f.end_layer();
    f.begin_layer(0);
    assert_eq!(f.entry(b"d", &Dir).unwrap(), Decision::Dir(b"d".to_vec()));
    f.end_layer();
}

#[test]
fn write_through_lower_symlink_is_refused() {
    let err = flatten(&[&[("a", Symlink)], &[("a/x", File)]]).unwrap_err();
    assert!(
        err.contains("layer 0 a:") && err.contains("layer 1 writes `a/x`"),
        "{err}"
    );
    assert!(err.contains("a/x"), "{err}");
    // ...unless the upper layer replaced the symlink first.
    let got = flatten(&[&[("a", Symlink)], &[("a", Dir), ("a/x", File)]]).unwrap();
    assert_eq!(got, ["a d", "a/x f"]);
    let got = flatten(&[&[("a", Symlink)], &[(".wh.a", File), ("a/x", File)]]).unwrap();
    assert_eq!(got, ["a/x f"]);
}

#[test]
fn write_through_symlink_of_same_layer_is_refused() {
    let err = flatten(&[&[("a", Symlink), ("a/x", File)]]).unwrap_err();
    assert!(
        err.contains("beneath `a`") && err.contains("symlink"),
        "{err}"
    );
    let err = flatten(&[&[("a/x", File), ("a", Symlink)]]).unwrap_err();
    assert!(err.contains("`a`"), "{err}");
    // A whiteout through a symlink is refused as well.
    let err = flatten(&[&[("a", Symlink), ("a/.wh.x", File)]]).unwrap_err();
    assert!(err.contains("beneath `a`"), "{err}");
}

#[test]
fn escapes_are_refused_and_absolute_names_land_inside() {
    assert!(flatten(&[&[("../evil", File)]])
        .unwrap_err()
        .contains("climbs out"));
    assert!(flatten(&[&[("a/../../evil", File)]])
        .unwrap_err()
        .contains("climbs out"));
    assert!(flatten(&[&[(".wh...", File)]])
        .unwrap_err()
        .contains("climbs out"));
    assert_eq!(flatten(&[&[("/etc/x", File)]]).unwrap(), ["etc/x f"]);
    let err = flatten(&[&[("h", HardLink(b"../../etc/shadow".to_vec()))]]).unwrap_err();
    assert!(err.contains("climbs out"), "{err}");
}

#[test]
fn devices_are_dropped_but_still_hide_lower_entries() {
    let got = flatten(&[
        &[("dev/null", File), ("keep", Fifo)],
        &[("dev/null", Device)],
    ])
    .unwrap();
    assert_eq!(got, ["dev d", "keep f"]);
}

#[test]
fn hard_links_resolve_to_a_written_file() {
    let mut f = Flattener::new();
    f.begin_layer(0);
    f.entry(b"f", &File).unwrap();
    f.entry(b"h1", &HardLink(b"./f".to_vec())).unwrap();
    f.entry(b"h2", &HardLink(b"h1".to_vec())).unwrap();
    f.end_layer();
    let (_, links) = f.finish().unwrap();
    assert_eq!(
        links,
        [
            (b"h1".to_vec(), b"f".to_vec()),
            (b"h2".to_vec(), b"f".to_vec())
        ]
    );

    let err = flatten(&[&[("h", HardLink(b"missing".to_vec()))]]).unwrap_err();
    assert!(err.contains("not in the image"), "{err}");
    // The link's target replaced in a later layer: the link would change
    // content, which cannot be represented; refused.
    let err = flatten(&[
        &[("f", File), ("h", HardLink(b"f".to_vec()))],
        &[("f", File)],
    ])
    .unwrap_err();
    assert!(err.contains("layer 1 replaces"), "{err}");
}

#[test]
fn duplicates_in_one_layer() {
    let got = flatten(&[&[("d", Dir), ("d", Dir)]]).unwrap();
    assert_eq!(got, ["d d"]);
    assert!(flatten(&[&[("f", File), ("f", File)]])
        .unwrap_err()
        .contains("twice"));
}

/// A naive model of the layer rules: apply the layers bottom up to a
/// map, as an unpacker would (whiteouts of a layer first, then its
/// entries in order). An entry that would go through a non-directory, or
/// a non-directory path twice in a layer, is a conflict: it is skipped
/// and reported (`true`).
fn model(layers: &[Vec<(String, Kind)>]) -> (BTreeSet<String>, bool) {
    let mut state: BTreeMap<String, char> = BTreeMap::new();
    let mut conflict = false;
    let under =
        |p: &str, q: &str| q.len() > p.len() && q.starts_with(p) && q.as_bytes()[p.len()] == b'/';
    for layer in layers {
        let marker = |name: &str| name.rsplit('/').next().unwrap().starts_with(".wh.");
        for (p, _) in layer.iter().filter(|(p, _)| marker(p)) {
            let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
            if name == ".wh..wh..opq" {
                state.retain(|q, _| !under(dir, q));
            } else {
                let gone = if dir.is_empty() {
                    name[4..].to_string()
                } else {
                    format!("{dir}/{}", &name[4..])
                };
                state.retain(|q, _| *q != gone && !under(&gone, q));
            }
        }
        let mut mine: BTreeSet<String> = BTreeSet::new();
        'entries: for (p, k) in layer {
            let parts: Vec<&str> = p.split('/').collect();
            for i in 1..parts.len() {
                match state.get(&parts[..i].join("/")) {
                    Some('d') | None => {}
                    Some(_) => {
                        conflict = true;
                        continue 'entries;
                    }
                }
            }
            if marker(p) {
                continue; // a whiteout marker alone makes no directory
            }
            if mine.contains(p) && (*k != Dir || state.get(p) != Some(&'d')) {
                conflict = true;
                continue;
            }
            for i in 1..parts.len() {
                state.entry(parts[..i].join("/")).or_insert('d');
            }
            if *k == Dir {
                if state.get(p) != Some(&'d') {
                    state.insert(p.clone(), 'd');
                }
            } else {
                state.retain(|q, _| !under(p, q));
                state.insert(p.clone(), if *k == File { 'f' } else { 's' });
            }
            mine.insert(p.clone());
        }
    }
    let tree = state.into_iter().map(|(p, k)| format!("{p} {k}")).collect();
    (tree, conflict)
}

/// The flattener's image as the same kind of set (implicit parents
/// included, as the writer creates them).
fn flattened(layers: &[Vec<(String, Kind)>]) -> Result<BTreeSet<String>, ()> {
    let mut f = Flattener::new();
    let mut out = BTreeSet::new();
    let add = |p: &[u8], k: char, out: &mut BTreeSet<String>| {
        let p = show(p);
        let parts: Vec<&str> = p.split('/').collect();
        for i in 1..parts.len() {
            out.insert(format!("{} d", parts[..i].join("/")));
        }
        out.insert(format!("{p} {k}"));
    };
    for (i, layer) in layers.iter().enumerate().rev() {
        f.begin_layer(i);
        for (p, k) in layer {
            match f.entry(p.as_bytes(), k).map_err(|_| ())? {
                Decision::Emit(p) => add(&p, if *k == File { 'f' } else { 's' }, &mut out),
                Decision::Dir(p) => add(&p, 'd', &mut out),
                _ => {}
            }
        }
        f.end_layer();
    }
    let (dirs, _) = f.finish().map_err(|_| ())?;
    for d in dirs {
        add(&d, 'd', &mut out);
    }
    Ok(out)
}

#[test]
fn agrees_with_a_naive_unpacker_on_random_layers() {
    // xorshift: deterministic, no dependency.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..6000 {
        let layers: Vec<Vec<(String, Kind)>> = (0..1 + rnd(3))
            .map(|_| {
                let mut layer: Vec<(String, Kind)> = (0..1 + rnd(6))
                    .map(|_| {
                        let depth = 1 + rnd(3);
                        let mut p: Vec<String> = (0..depth)
                            .map(|_| ["a", "b"][rnd(2) as usize].to_string())
                            .collect();
                        let k = match rnd(6) {
                            0 | 1 => Dir,
                            2 | 3 => File,
                            4 => Symlink,
                            _ => {
                                let last = p.pop().unwrap();
                                p.push(if rnd(2) == 0 {
                                    ".wh..wh..opq".into()
                                } else {
                                    format!(".wh.{last}")
                                });
                                File
                            }
                        };
                        (p.join("/"), k)
                    })
                    .collect();
                // Real layers list a directory before what it holds.
                layer.sort_by(|x, y| x.0.cmp(&y.0));
                layer.dedup();
                layer
            })
            .collect();
        // The flattener refuses only what the unpacker finds conflicting,
        // and where it accepts, the trees agree (a conflict whose entries
        // an upper layer hides anyway is accepted: nothing of it stays).
        let (want, conflict) = model(&layers);
        match flattened(&layers) {
            Ok(got) => {
                assert_eq!(want, got, "layers (bottom first): {layers:?}");
                ok += 1;
            }
            Err(()) => {
                assert!(conflict, "refused without a conflict: {layers:?}");
                refused += 1;
            }
        }
    }
    assert!(ok > 1000 && refused > 100, "{ok} agreed, {refused} refused");
}
