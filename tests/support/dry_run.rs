//! A plan as `--dry-run` (or `--image-show-plan`) prints it, checked
//! against the mounts the container really has.

/// The flags `--dry-run` prints for each mount (`/dev <- tmpfs ... [rw,nosuid,nodev,noexec]`),
/// by target.
pub fn flags(out: &str) -> Vec<(String, Vec<String>)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("mount ")?.trim_start();
            let (_, rest) = rest.split_once(' ')?;
            let (target, rest) = rest.split_once(" <- ")?;
            let flags = rest.rsplit_once(" [")?.1.split_once(']')?.0;
            Some((target.to_string(), flags.split(',').map(String::from).collect()))
        })
        .collect()
}

/// Checks each mount the dry run listed against the container's own
/// mountinfo: every flag the dry run printed (ro, nosuid, nodev, noexec) is
/// on the top mount at that target (a source's locked flags may add more).
pub fn assert_matches_mountinfo(dry: &str, mountinfo: &str) {
    let flags = flags(dry);
    assert!(flags.len() > 15, "no mounts in the dry run:\n{dry}");
    for (target, want) in flags {
        let Some(opts) = mountinfo.lines().filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&target.as_str())).then(|| f[5].to_string())
        }).last() else {
            // Optional host pieces (no /dev/mqueue on this node) are skipped.
            assert!(target == "/dev/mqueue", "{target}: in the dry run, not mounted:\n{mountinfo}");
            continue;
        };
        let have: Vec<&str> = opts.split(',').collect();
        for w in want.iter().filter(|w| *w != "rec") {
            let ok = if w == "rw" { !have.contains(&"ro") } else { have.contains(&w.as_str()) };
            assert!(ok, "{target}: the dry run says {w}, the mount has {opts}");
        }
    }
}
