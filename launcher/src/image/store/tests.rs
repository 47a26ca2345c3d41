use super::*;

fn digest(n: u8) -> Digest {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
        .parse()
        .unwrap()
}

fn reference(s: &str) -> ImageRef {
    match s.parse::<ImageSpec>().unwrap() {
        ImageSpec::Registry(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Publishes a fake squashfs (bytes only: the store does not read them) as
/// image `d` and tags it.
fn put(root: &StoreRoot, d: &Digest, tag: &str, platform: &str) -> StoredImage {
    let work = root.work_dir().unwrap();
    let sqfs = work.path().join("out.sqfs");
    fs::write(&sqfs, b"hsqs-not-really").unwrap();
    let mut tree = crate::image::verity::Builder::default();
    tree.update(b"hsqs-not-really");
    let tree = tree.finish();
    let meta = ImageMeta {
        digest: d.clone(),
        squashfs_sha256: sha256_file(&sqfs).unwrap(),
        config: ImageConfig {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        },
        source_ref: tag.into(),
        platform: Some(platform.parse().unwrap()),
        size: 15,
        created: None,
        stored_at: 0,
        verity_root: Some(tree.root()),
    };
    let lock = root.lock_image(d).unwrap();
    let img = root.publish(&work, &sqfs, &tree, &meta, &lock).unwrap();
    assert_eq!(img.verity().unwrap().root, tree.root());
    assert_eq!(fs::read(img.verity().unwrap().file).unwrap(), tree.encode());
    root.set_tag(
        &reference(tag),
        Some(&digest(99)),
        &platform.parse().unwrap(),
        d,
    )
    .unwrap();
    img
}

#[test]
fn publish_then_resolve_by_tag_digest_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::with_dirs(None, Some(dir.path().to_path_buf()));
    let root = store.user.as_ref().unwrap();
    let img = put(root, &digest(1), "reg:5000/a/b:1", "linux/amd64");
    assert_eq!(img.scope, Scope::User);
    assert_eq!(
        fs::metadata(&img.squashfs).unwrap().permissions().mode() & 0o777,
        0o444
    );
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let got = store
        .resolve_for(&"reg:5000/a/b:1".parse().unwrap(), &amd64)
        .unwrap();
    assert_eq!(got, img);
    assert_eq!(got.config.cmd, vec!["/bin/sh"]);
    let by_id = store
        .resolve_for(&format!("id:{}", digest(1)).parse().unwrap(), &amd64)
        .unwrap();
    assert_eq!(by_id.digest, digest(1));
    let by_digest = store
        .resolve_for(
            &format!("reg:5000/a/b@{}", digest(1)).parse().unwrap(),
            &amd64,
        )
        .unwrap();
    assert_eq!(by_digest.digest, digest(1));
    // Work dirs are gone after publishing.
    assert_eq!(fs::read_dir(root.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn not_found_and_other_platform_say_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::with_dirs(None, Some(dir.path().to_path_buf()));
    put(
        store.user.as_ref().unwrap(),
        &digest(1),
        "reg:5000/a/b:1",
        "linux/arm64",
    );
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let e = store
        .resolve_for(&"reg:5000/a/b:2".parse().unwrap(), &amd64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shoal pull reg:5000/a/b:2"), "{e}");
    let e = store
        .resolve_for(&"reg:5000/a/b:1".parse().unwrap(), &amd64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--platform linux/amd64") && e.contains("linux/arm64"),
        "{e}"
    );
}

#[test]
fn site_store_wins_over_user_store() {
    let site = tempfile::tempdir().unwrap();
    let user = tempfile::tempdir().unwrap();
    let store = Store::with_dirs(Some(site.path().into()), Some(user.path().into()));
    put(
        store.user.as_ref().unwrap(),
        &digest(2),
        "reg/x:1",
        "linux/amd64",
    );
    put(
        store.site.as_ref().unwrap(),
        &digest(3),
        "reg/x:1",
        "linux/amd64",
    );
    let got = store
        .resolve_for(&"reg/x:1".parse().unwrap(), &"linux/amd64".parse().unwrap())
        .unwrap();
    assert_eq!((got.scope, got.digest.clone()), (Scope::Site, digest(3)));
}

#[test]
fn a_moved_tag_forgets_other_platforms_and_gc_collects_the_old_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().into(), Scope::User);
    put(&root, &digest(1), "reg/x:1", "linux/amd64");
    put(&root, &digest(2), "reg/x:1", "linux/arm64");
    assert_eq!(
        root.tag_entry(&reference("reg/x:1"))
            .unwrap()
            .unwrap()
            .images
            .len(),
        2
    );
    // Re-pulled after the tag moved (new index digest 98).
    root.set_tag(
        &reference("reg/x:1"),
        Some(&digest(98)),
        &"linux/amd64".parse().unwrap(),
        &digest(1),
    )
    .unwrap();
    let entry = root.tag_entry(&reference("reg/x:1")).unwrap().unwrap();
    assert_eq!(entry.images.len(), 1);
    let report = root.gc().unwrap();
    assert_eq!(report.images_removed, 1);
    assert!(root.image(&digest(2)).unwrap().is_none());
    assert!(root.image(&digest(1)).unwrap().is_some());
}

#[test]
fn gc_removes_dead_work_dirs_but_not_live_ones_nor_locked_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().into(), Scope::User);
    put(&root, &digest(1), "reg/x:1", "linux/amd64");
    let live = root.work_dir().unwrap();
    // A killed pull: a work dir whose lock file nobody holds.
    let dead = root.tmp_dir().join("n9-123-dead");
    fs::create_dir_all(dead.join("blobs")).unwrap();
    fs::write(root.tmp_dir().join("n9-123-dead.lock"), b"").unwrap();
    // An image nobody names but a pull is publishing right now.
    put(&root, &digest(5), "reg/y:1", "linux/amd64");
    root.remove_tag(&reference("reg/y:1")).unwrap();
    let held = root.lock_image(&digest(5)).unwrap();
    let report = root.gc().unwrap();
    assert_eq!(report.temps_removed, 1, "{report:?}");
    assert!(!dead.exists());
    assert!(live.path().exists());
    assert!(
        root.image(&digest(5)).unwrap().is_some(),
        "locked image must survive gc"
    );
    drop(held);
    assert_eq!(root.gc().unwrap().images_removed, 1);
    assert!(root.image(&digest(1)).unwrap().is_some());
}

#[test]
fn gc_removes_lock_files_nobody_holds_and_keeps_held_ones() {
    // Regression (issue 18): a killed `shoal pull` left locks/HEX.lock for
    // good (its flock died with it, its file did not).
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().into(), Scope::User);
    drop(root.lock_image(&digest(1)).unwrap()); // a dead holder's file
    let held = root.lock_image(&digest(2)).unwrap();
    let report = root.gc().unwrap();
    assert_eq!(report.locks_removed, 1, "{report:?}");
    let left: Vec<_> = fs::read_dir(dir.path().join("locks")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from(format!("{}.lock", digest(2).hex()))]);
    drop(held);
    assert_eq!(root.gc().unwrap().locks_removed, 1);
    // The lock still works after its file went.
    drop(root.lock_image(&digest(2)).unwrap());
}

#[test]
fn tampered_image_is_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let root = StoreRoot::new(dir.path().into(), Scope::User);
    let img = put(&root, &digest(1), "reg/x:1", "linux/amd64");
    fs::remove_file(&img.squashfs).unwrap();
    let e = root.image(&digest(1)).unwrap_err().to_string();
    assert!(e.contains("damaged") && e.contains("shoal rm"), "{e}");
}

#[test]
fn user_dir_defaults() {
    let env = |k: &str| match k {
        "HOME" => Some("/home/u".to_string()),
        _ => None,
    };
    assert_eq!(
        default_user_dir(&env),
        Some(PathBuf::from("/home/u/.local/share/shoal"))
    );
    let env = |k: &str| match k {
        "HOME" => Some("/home/u".to_string()),
        "XDG_DATA_HOME" => Some("/data".to_string()),
        _ => None,
    };
    assert_eq!(default_user_dir(&env), Some(PathBuf::from("/data/shoal")));
}

#[test]
fn an_index_is_kept_byte_for_byte_and_its_variants_are_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::with_dirs(None, Some(dir.path().to_path_buf()));
    let root = store.user.as_ref().unwrap();
    // Odd spacing and key order: kept as served, never re-serialized.
    let bytes = br#"{ "schemaVersion":2,"manifests":[ ],  "mediaType":"application/vnd.oci.image.index.v1+json"}"#;
    let idx = root.put_index(bytes).unwrap();
    assert_eq!(root.put_index(bytes).unwrap(), idx);
    assert_eq!(root.index_bytes(&idx).unwrap().unwrap(), bytes.to_vec());
    put(root, &digest(1), "reg/x:other", "linux/amd64");
    put(root, &digest(2), "reg/x:other2", "linux/amd64");
    let r = reference("reg/x:hpc");
    let variants = [("#0 linux/amd64".to_string(), digest(1)), ("#1 linux/amd64/v3".to_string(), digest(2))].into();
    root.set_index_tag(&r, &idx, variants, BTreeMap::new()).unwrap();
    let (found, _) = store.find_index(&"reg/x:hpc".parse().unwrap()).unwrap().unwrap();
    assert_eq!(found.digest, idx);
    assert_eq!(found.variants.len(), 2);
    assert!(store.find_index(&format!("id:{idx}").parse().unwrap()).unwrap().is_some());
    assert!(store.find_index(&"reg/x:other".parse().unwrap()).unwrap().is_none());
    // The variants keep their images after the other tags go.
    root.remove_tag(&reference("reg/x:other")).unwrap();
    root.remove_tag(&reference("reg/x:other2")).unwrap();
    let report = root.gc().unwrap();
    assert_eq!((report.images_removed, report.indexes_removed), (0, 0));
    assert_eq!(store.list().unwrap().len(), 2);
    // Untagged, the index and its images are collected.
    assert_eq!(root.remove_tag(&r).unwrap().len(), 2);
    let report = root.gc().unwrap();
    assert_eq!((report.images_removed, report.indexes_removed), (2, 1));
    // Damaged bytes are refused, not used.
    let idx2 = root.put_index(b"{}").unwrap();
    let p = root.index_path(&idx2);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, b"{ }").unwrap();
    assert!(root.index_bytes(&idx2).is_err());
}

#[test]
fn a_new_user_store_is_private_and_a_site_store_is_not_touched() {
    // Regression (issue 18): the user store was made 0755 under a 0755
    // home, so every user of a login node could read another's images
    // (pulled with their registry login) and tags.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("home/.local/share/shoal");
    let store = Store::with_dirs(Some(dir.path().join("site")), Some(user.clone()));
    store.root(Scope::User).unwrap();
    assert_eq!(fs::metadata(&user).unwrap().permissions().mode() & 0o777, 0o700);
    store.root(Scope::Site).unwrap();
    assert!(!dir.path().join("site").exists());
    // An existing store shared with a group keeps its user's mode.
    fs::set_permissions(&user, fs::Permissions::from_mode(0o750)).unwrap();
    store.root(Scope::User).unwrap();
    assert_eq!(fs::metadata(&user).unwrap().permissions().mode() & 0o777, 0o750);
}

#[test]
fn a_store_made_before_f7_is_tightened_when_its_owner_opens_it() {
    // Regression (issue 18): a store made 0755 before F7 stayed readable
    // by every user of the login node.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("shoal");
    for legacy in [0o755, 0o775, 0o701] {
        fs::create_dir_all(&user).unwrap();
        fs::set_permissions(&user, fs::Permissions::from_mode(legacy)).unwrap();
        Store::with_dirs(None, Some(user.clone())).root(Scope::User).unwrap();
        assert_eq!(fs::metadata(&user).unwrap().permissions().mode() & 0o777, 0o700, "from {legacy:o}");
    }
    // Through a symlink to it too; a store someone else owns is not
    // touched (the tests run as root: one owned by nobody).
    fs::set_permissions(&user, fs::Permissions::from_mode(0o755)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&user, &link).unwrap();
    Store::with_dirs(None, Some(link)).root(Scope::User).unwrap();
    assert_eq!(fs::metadata(&user).unwrap().permissions().mode() & 0o777, 0o700);
    if nix::unistd::geteuid().is_root() {
        fs::set_permissions(&user, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&user, Some(65534), None).unwrap();
        Store::with_dirs(None, Some(user.clone())).root(Scope::User).unwrap();
        assert_eq!(fs::metadata(&user).unwrap().permissions().mode() & 0o777, 0o755);
    }
}
