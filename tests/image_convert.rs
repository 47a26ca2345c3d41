//! Conversion of OCI layers into one squashfs (`shoal::image::convert`),
//! checked against an independent reference: `umoci unpack` of the same
//! image, packed with `mksquashfs` and compared with `sqfsdiff` and
//! `unsquashfs -lln` run as the unprivileged user. The layers are made by
//! tests/testbed/mklayers.py (the same generator that feeds shoal/layers and
//! shoal/evil in the test registry); the big image comes from the registry.
//!
//! The conversion itself also runs as the unprivileged user: the test binary
//! re-executes its own `convert_child` helper under the user's uid.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use shoal::image::convert::{
    check_squashfs, dir_to_squashfs, layers_to_squashfs, ConvertError, Layer, LayerCompression,
    Progress, SquashOptions,
};
use support::{ok, testbed, Testbed};

/// The OCI layout made by mklayers.py, owned by the user.
fn layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let tb = testbed();
        let dir = tb.user_tempdir("convert-layout").join("oci");
        let script = support::repo_root().join("tests/testbed/mklayers.py");
        ok(&tb.user(&format!("python3 {} {}", script.display(), dir.display())));
        dir
    })
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The layers of `tag` in an OCI layout, bottom first.
fn layers_of(layout: &Path, tag: &str) -> Vec<Layer> {
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()));
    let manifest = json(&blob(desc["digest"].as_str().unwrap()));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| Layer {
            path: blob(l["digest"].as_str().unwrap()),
            compression: LayerCompression::from_media_type(l["mediaType"].as_str().unwrap())
                .expect("layer media type"),
            digest: l["digest"].as_str().unwrap().to_string(),
            arriving: None,
        })
        .collect()
}

fn sh(script: &str) -> String {
    ok(&Command::new("bash").args(["-c", script]).output().unwrap())
}

/// `umoci unpack` of `layout:tag` (as root, so owners are real), less the
/// device nodes Shoal drops, packed by mksquashfs into `out`.
fn reference(tb: &Testbed, layout: &Path, tag: &str, out: &Path) -> PathBuf {
    let bundle = out.with_extension("bundle");
    sh(&format!(
        "rm -rf {b} && umoci unpack --image {l}:{tag} {b} >/dev/null && \
         find {b}/rootfs \\( -type b -o -type c \\) -delete && \
         mksquashfs {b}/rootfs {o} -noappend -quiet -no-progress -xattrs \
           -comp zstd -Xcompression-level 3 >/dev/null && chown {u} {o}",
        b = bundle.display(),
        l = layout.display(),
        o = out.display(),
        u = tb.user,
    ));
    bundle.join("rootfs")
}

/// `unsquashfs -lln` as the user, without times and directory sizes (which
/// depend on how the tree was made, not on what it holds).
fn listing(tb: &Testbed, image: &Path) -> String {
    ok(&tb.user(&format!(
        "unsquashfs -lln {} | awk '{{ if (substr($1,1,1)==\"d\") $3=\"\"; $4=\"\"; $5=\"\"; print }}'",
        image.display()
    )))
}

/// `sqfsdiff` as the user: contents, owners and permissions equal. Notes
/// about basic vs extended inode types (hard links, xattrs) are layout, not
/// content: mksquashfs and tar2sqfs choose differently.
fn assert_same_content(tb: &Testbed, reference: &Path, ours: &Path) {
    let out = tb.user(&format!(
        "sqfsdiff -a {} -b {}",
        reference.display(),
        ours.display()
    ));
    let report = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = report
        .lines()
        .filter(|l| !l.ends_with("has an extended type") && !l.ends_with("has a basic type"))
        .collect();
    assert!(
        out.status.code() == Some(0) || (out.status.code() == Some(1) && real.is_empty()),
        "sqfsdiff {} {}: {}\n{report}{}",
        reference.display(),
        ours.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Converts as root, in this process; checks the progress reports.
fn convert(
    layers: &[Layer],
    out: &Path,
) -> Result<shoal::image::convert::SquashSummary, ConvertError> {
    convert_reporting(layers, out).0
}

/// Like [`convert`], also returning how many `Reading` reports came.
fn convert_reporting(
    layers: &[Layer],
    out: &Path,
) -> (
    Result<shoal::image::convert::SquashSummary, ConvertError>,
    usize,
) {
    let seen = std::cell::RefCell::new(Vec::new());
    let r = layers_to_squashfs(layers, out, &SquashOptions::default(), &|p| {
        seen.borrow_mut().push(p)
    });
    let seen = seen.into_inner();
    let mut last = 0;
    let mut reading = 0;
    for p in &seen {
        if let Progress::Reading { done, total } = *p {
            assert!(done >= last && done <= total, "{seen:?}");
            last = done;
            reading += 1;
        }
    }
    if r.is_ok() {
        assert_eq!(seen.last(), Some(&Progress::Finishing));
    }
    (r, reading)
}

/// Converts as the unprivileged user: re-runs this test binary's
/// `convert_child` under the user's uid and gid. Returns (success, stderr).
fn convert_as_user(tb: &Testbed, layers: &[Layer], out: &Path) -> (bool, String) {
    let mut args = vec![out.display().to_string()];
    for l in layers {
        args.push(format!("{}={}", l.digest, l.path.display()));
    }
    let result = Command::new("runuser")
        .args([
            "-u",
            &tb.user,
            "--",
            "env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
        ])
        .arg(format!("HOME={}", tb.home.display()))
        .arg(format!("SHOAL_CONVERT_CHILD={}", args.join("\n")))
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "convert_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .current_dir(&tb.home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&result.stdout).into_owned();
    // The child prints its own verdict; the harness's exit status is the test's.
    let success = text.contains("CHILD-OK");
    assert!(
        success || text.contains("CHILD-ERR"),
        "child did not run:\n{text}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    (success, text)
}

#[test]
#[ignore = "helper: run by convert_as_user as the unprivileged user"]
fn convert_child() {
    let spec = std::env::var("SHOAL_CONVERT_CHILD").expect("run by convert_as_user");
    let mut lines = spec.lines();
    let out = PathBuf::from(lines.next().unwrap());
    let layers: Vec<Layer> = lines
        .map(|l| {
            let (digest, path) = l.split_once('=').unwrap();
            // Deliberately claim gzip for all: magic bytes must decide.
            Layer {
                path: path.into(),
                compression: LayerCompression::Gzip,
                digest: digest.into(),
                arriving: None,
            }
        })
        .collect();
    assert_ne!(current_uid(), 0, "the child must not run as root");
    match layers_to_squashfs(&layers, &out, &SquashOptions::default(), &|_| {}) {
        Ok(s) => println!("CHILD-OK {}", s.sha256),
        Err(e) => println!("CHILD-ERR {e}"),
    }
}

fn current_uid() -> u32 {
    sh("id -u").trim().parse().unwrap()
}

fn sha256sum(path: &Path) -> String {
    sh(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn layer_rules_match_umoci_unpack() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-rules");
    let layers = layers_of(layout(), "layers");
    assert_eq!(layers.len(), 3);
    let ours = dir.join("ours.sqfs");
    let summary = convert(&layers, &ours).unwrap();
    sh(&format!("chown {} {}", tb.user, ours.display()));

    // What the store records: size, hash of the whole file, inode count.
    assert_eq!(summary.size, std::fs::metadata(&ours).unwrap().len());
    assert_eq!(summary.sha256, sha256sum(&ours));
    assert_eq!(check_squashfs(&ours).unwrap(), summary);

    let refimg = dir.join("ref.sqfs");
    reference(tb, layout(), "layers", &refimg);
    assert_same_content(tb, &refimg, &ours);
    let list = listing(tb, &ours);
    assert_eq!(list, listing(tb, &refimg));

    // The rules, spelled out (the reference agreeing is the real check;
    // these say what it agreed on).
    let paths: BTreeSet<&str> = list
        .lines()
        .filter_map(|l| l.split("squashfs-root").nth(1))
        .map(|p| p.split(" -> ").next().unwrap())
        .collect();
    for gone in [
        "/gone/a",
        "/gone/sub",
        "/wh/remove-me",
        "/opq/old1",
        "/opq/oldsub",
        "/d2f/child",
        "/dev/null",
    ] {
        assert!(!paths.contains(gone), "{gone} should be gone:\n{list}");
    }
    for kept in [
        "/gone/recreated",
        "/wh/keep",
        "/opq/new",
        "/f2d/inside",
        "/data/hardlink",
        "/run/fifo",
    ] {
        assert!(paths.contains(kept), "{kept} missing:\n{list}");
    }
    let line = |suffix: &str| {
        list.lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix} in\n{list}"))
            .to_string()
    };
    assert!(line("squashfs-root/bin/suid").starts_with("-rwsr-xr-x 0/0"));
    assert!(line("squashfs-root/shared").starts_with("drwxrwxrwt 0/0"));
    assert!(line("squashfs-root/home/u1000/file").starts_with("-rw------- 1000/1000"));
    assert!(line("squashfs-root/top").starts_with("-rw-r----- 12/34"));
    assert!(line("squashfs-root/d2f").starts_with("-rw-r--r--"));
    assert!(line("squashfs-root/f2d").starts_with("drwxr-xr-x"));
    assert!(
        line("squashfs-root/opq").starts_with("drwx------"),
        "upper layer's opq metadata wins"
    );
    assert!(line("squashfs-root/abs-link -> /etc/passwd").starts_with("lrwxrwxrwx"));
    assert!(line("squashfs-root/run/fifo").starts_with("prw-r--r--"));

    // Hard link and xattr, read back as the user.
    let stat = ok(&tb.user(&format!("rdsquashfs -s /data/orig {}", ours.display())));
    assert!(stat.contains("Hard link count: 2"), "{stat}");
    let xattrs = ok(&tb.user(&format!(
        "sqfs2tar {} | python3 -c 'import sys, tarfile\n\
         for m in tarfile.open(fileobj=sys.stdin.buffer, mode=\"r|\"):\n    \
         print(m.name, m.pax_headers.get(\"SCHILY.xattr.user.shoal\"))'",
        ours.display()
    )));
    assert!(
        xattrs
            .lines()
            .any(|l| l.starts_with("data/") && l.ends_with(" test-xattr")),
        "{xattrs}"
    );
    let content = ok(&tb.user(&format!(
        "rdsquashfs -c /etc/shoal-test-image {}",
        ours.display()
    )));
    assert_eq!(content, "layers\n");
}

#[test]
fn the_user_converts_and_compression_does_not_change_the_image() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-user");
    let gzip = layers_of(layout(), "layers");
    let by_root = convert(&gzip, &dir.join("root.sqfs")).unwrap();

    // The unprivileged user, with the zstd layers mislabelled as gzip (the
    // child claims gzip for every layer): magic bytes decide, and the result
    // is byte for byte what root made from the gzip/plain layers.
    let zstd = layers_of(layout(), "layers-zstd");
    let out = dir.join("user.sqfs");
    let (success, text) = convert_as_user(tb, &zstd, &out);
    assert!(success, "{text}");
    assert!(
        text.contains(&format!("CHILD-OK {}", by_root.sha256)),
        "{text}"
    );
    let owner = sh(&format!("stat -c %U {}", out.display()));
    assert_eq!(owner.trim(), tb.user);
    assert_eq!(sha256sum(&out), by_root.sha256);
}

#[test]
fn malicious_layers_are_refused_and_nothing_is_written_outside() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-evil");
    let escaped = Path::new("/tmp/shoal-evil-escaped");
    let _ = std::fs::remove_file(escaped);
    // Around: this test's directory and the layout (the parent holds other
    // tests' directories, created concurrently).
    let around = || {
        sh(&format!(
            "ls -AR {} {} | sort",
            dir.display(),
            layout().display()
        ))
    };
    let before = around();
    for (tag, entry, says) in [
        ("evil", "`a`", "writes `a/shoal-evil-escaped` beneath it"),
        (
            "evil-samelayer",
            "`b/shoal-evil-escaped`",
            "beneath `b`, which this layer made a symlink",
        ),
        (
            "evil-dotdot",
            "`../../../../tmp/shoal-evil-escaped`",
            "climbs out of the image root",
        ),
        ("evil-hardlink", "`shadow`", "climbs out of the image root"),
    ] {
        let layers = layers_of(layout(), tag);
        let out = dir.join(format!("{tag}.sqfs"));
        // As root in this process (the dangerous case)...
        let err = convert(&layers, &out).expect_err(tag).to_string();
        let blamed = if tag == "evil" {
            &layers[0]
        } else {
            layers.last().unwrap()
        };
        assert!(
            err.starts_with(&format!("layer {}: entry {entry}: ", blamed.digest)),
            "{tag}: {err}"
        );
        assert!(err.contains(says), "{tag}: {err}");
        if tag == "evil" {
            assert!(
                err.contains(&layers[1].digest),
                "names the upper layer too: {err}"
            );
        }
        // ...and as the user.
        let _ = std::fs::remove_file(&out);
        let (success, text) = convert_as_user(tb, &layers, &out);
        assert!(!success && text.contains(says), "{tag} as user: {text}");
        let _ = std::fs::remove_file(&out);
    }
    assert!(!escaped.exists(), "{} was written", escaped.display());
    assert_eq!(around(), before);

    // An absolute name is taken relative to the image root.
    let out = dir.join("absolute.sqfs");
    convert(&layers_of(layout(), "evil-absolute"), &out).unwrap();
    sh(&format!("chown {} {}", tb.user, out.display()));
    assert!(listing(tb, &out).contains("squashfs-root/tmp/shoal-evil-absolute"));
    assert!(!Path::new("/tmp/shoal-evil-absolute").exists());
}

#[test]
fn directory_import_and_squashfs_check() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-import");
    let ours = dir.join("layers.sqfs");
    convert(&layers_of(layout(), "layers"), &ours).unwrap();
    sh(&format!("chown {} {}", tb.user, ours.display()));

    // `shoal import DIR`: the unpacked reference tree packs to the same content.
    let rootfs = reference(tb, layout(), "layers", &dir.join("unused.sqfs"));
    let imported = dir.join("imported.sqfs");
    let summary = dir_to_squashfs(&rootfs, &imported, &SquashOptions::default(), &|_| {}).unwrap();
    sh(&format!("chown {} {}", tb.user, imported.display()));
    assert_eq!(summary.sha256, sha256sum(&imported));
    assert_same_content(tb, &ours, &imported);
    let stat = ok(&tb.user(&format!("rdsquashfs -s /data/orig {}", imported.display())));
    assert!(
        stat.contains("Hard link count: 2"),
        "import keeps hard links: {stat}"
    );

    // `shoal import FILE.sqfs`: a good image passes, broken ones are named.
    assert_eq!(check_squashfs(&imported).unwrap(), summary);
    let truncated = dir.join("truncated.sqfs");
    let bytes = std::fs::read(&imported).unwrap();
    std::fs::write(&truncated, &bytes[..200]).unwrap();
    let err = check_squashfs(&truncated).unwrap_err().to_string();
    assert!(
        err.starts_with(&truncated.display().to_string()) && err.contains("truncated"),
        "{err}"
    );
    let not = dir.join("not.sqfs");
    std::fs::write(&not, b"not a squashfs image ".repeat(10)).unwrap();
    let err = check_squashfs(&not).unwrap_err().to_string();
    assert!(err.contains("no squashfs magic"), "{err}");
}

#[test]
fn disk_full_is_reported_with_the_directory() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-full");
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=64k tmpfs {}",
        mnt.display()
    ));
    // The big layer of the layers image is tiny; a large incompressible
    // file in a layer of our own fills 64k at once.
    let layer = dir.join("big.tar");
    sh(&format!(
        "cd {d} && mkdir -p t && head -c 1048576 /dev/urandom > t/random && tar -C t -cf {l} random",
        d = dir.display(),
        l = layer.display()
    ));
    let layers = [Layer {
        path: layer,
        compression: LayerCompression::Uncompressed,
        digest: "sha256:big".into(),
        arriving: None,
    }];
    let err = convert(&layers, &mnt.join("x.sqfs")).unwrap_err();
    sh(&format!("umount {}", mnt.display()));
    let msg = err.to_string();
    assert!(matches!(err, ConvertError::DiskFull { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!("no space left in {}", mnt.display())),
        "{msg}"
    );
}

#[test]
fn debian_mpich_converts_like_umoci_unpack() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-mpich");
    let layout = dir.join("oci");
    sh(&format!(
        "skopeo copy -q --src-cert-dir /var/lib/shoal-testbed/tls/skopeo \
         docker://{}/shoal/debian-mpich:12 oci:{}:12",
        tb.registry,
        layout.display()
    ));
    let layers = layers_of(&layout, "12");
    assert_eq!(layers.len(), 2);
    let ours = dir.join("ours.sqfs");
    let (summary, reports) = convert_reporting(&layers, &ours);
    let summary = summary.unwrap();
    assert!(
        reports > 10,
        "a 120 MB image gives progress every 4 MB, got {reports}"
    );
    sh(&format!("chown {} {}", tb.user, ours.display()));
    assert!(summary.entries > 5000, "{summary:?}");
    let refimg = dir.join("ref.sqfs");
    reference(tb, &layout, "12", &refimg);
    assert_same_content(tb, &refimg, &ours);
    assert_eq!(listing(tb, &ours), listing(tb, &refimg));
    let list = listing(tb, &ours);
    assert!(list.contains("squashfs-root/usr/local/bin/hello_mpi"));
    assert!(
        !list.contains("squashfs-root/usr/share/doc/"),
        "layer 2 deleted the docs"
    );
    sh(&format!("rm -rf {}", dir.display()));
}

#[test]
fn compression_and_block_size_options_are_honoured() {
    use shoal::image::convert::Compression;
    let tb = testbed();
    let dir = tb.user_tempdir("convert-options");
    let layers = layers_of(layout(), "layers");
    let base = dir.join("default.sqfs");
    convert(&layers, &base).unwrap();
    for (compression, block_size, says) in [
        (Compression::Lz4, 65536, "lz4"),
        (Compression::Gzip { level: 9 }, 131072, "gzip"),
        (Compression::Zstd { level: 19 }, 1 << 20, "zstd"),
    ] {
        let out = dir.join(format!("{says}.sqfs"));
        let opts = SquashOptions {
            compression,
            block_size,
        };
        layers_to_squashfs(&layers, &out, &opts, &|_| {}).unwrap();
        sh(&format!(
            "chown {} {} {}",
            tb.user,
            out.display(),
            base.display()
        ));
        let sb = ok(&tb.user(&format!("unsquashfs -s {}", out.display())));
        assert!(
            sb.contains(&format!("Compression {says}")),
            "{compression}: {sb}"
        );
        assert!(
            sb.contains(&format!("Block size {block_size}")),
            "{compression}: {sb}"
        );
        assert_same_content(tb, &base, &out);
    }
    let bad = SquashOptions {
        compression: Compression::Lz4,
        block_size: 1000,
    };
    let err = layers_to_squashfs(&layers, &dir.join("bad.sqfs"), &bad, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("block size 1000"), "{err}");
}

#[test]
fn corrupt_layers_are_named() {
    let tb = testbed();
    let dir = tb.user_tempdir("convert-corrupt");
    let layers = layers_of(layout(), "layers");
    // The bottom layer (gzip) cut in half, the top one (plain tar) cut
    // inside its first file's data.
    for (i, layer) in [(0, &layers[0]), (2, &layers[2])] {
        let bytes = std::fs::read(&layer.path).unwrap();
        let cut = dir.join(format!("cut-{i}"));
        let keep = if i == 0 { bytes.len() / 2 } else { 512 * 3 + 3 };
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let mut broken = layers.clone();
        broken[i] = Layer {
            path: cut.clone(),
            ..layer.clone()
        };
        let err = convert(&broken, &dir.join("out.sqfs"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("layer {} ({})", layer.digest, cut.display())),
            "{err}"
        );
        assert!(err.ends_with("delete it and pull again"), "{err}");
    }
}
