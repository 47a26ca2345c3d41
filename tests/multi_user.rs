//! Two users on the same nodes (issue 18): `alice` (the test bed's user)
//! and `bob` (made by tests/testbed/up.sh the same way). Bob can't read,
//! replace or poison alice's images, node cache entries or containers
//! (named ones included): not by guessing paths, not by forging the image
//! pin his own job carries, not by racing a stage.
//!
//! Images: tests/testbed/mkhostile.py --big, pushed as `t18/mu:TAG`; bob's
//! own image is a squashfs he makes with mksquashfs. Run under the cluster
//! lock (see tests/run.sh).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::{fails, ok, slurm, Testbed};

const REG: &str = "127.0.0.1:5443";
const NODE: &str = "n1";
const CACHE: &str = "/var/cache/shoal";
const BOB: &str = "bob";

fn image(tag: &str) -> String {
    format!("{REG}/t18/mu:{tag}")
}

fn pushed() -> &'static Testbed {
    static PUSHED: OnceLock<()> = OnceLock::new();
    let tb = slurm();
    PUSHED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("t18-mu-oci-{}", std::process::id()));
        let gen = support::repo_root().join("tests/testbed/mkhostile.py");
        ok(&tb.root(&format!("python3 {} --big {} 32", gen.display(), dir.display())));
        support::push_oci_tags(tb, &dir, ["big", "small"], image);
    });
    tb
}

/// Runs a script as bob in his home, with a login-like environment.
fn bob(script: &str) -> Output {
    Command::new("runuser")
        .args(["-u", BOB, "--", "env", "-i", "HOME=/home/bob", "USER=bob", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
        .args(["bash", "-c"])
        .arg(format!("cd ~ && {script}"))
        .output()
        .expect("runuser")
}

/// Alice with a store of her own made by this build (so with the modes a
/// new store gets), used by `shoal` and by `srun`'s pinning alike.
struct Alice<'a> {
    tb: &'a Testbed,
    dir: PathBuf,
}

impl<'a> Alice<'a> {
    fn new(tb: &'a Testbed) -> Alice<'a> {
        Alice { tb, dir: tb.user_tempdir("multi-user") }
    }

    fn sh(&self, script: &str) -> Output {
        self.tb.user(&format!(
            "set -e; cd '{d}'; export XDG_DATA_HOME='{d}/data' SSL_CERT_FILE='{ca}'; shoal() {{ '{bin}' \"$@\"; }}; {script}",
            d = self.dir.display(),
            ca = self.tb.ca_cert.display(),
            bin = self.tb.shoal().display()
        ))
    }

    fn info(&self, img: &str) -> serde_json::Value {
        serde_json::from_str(&ok(&self.sh(&format!("shoal inspect --json {img}")))).unwrap()
    }
}

fn uid(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn cache_entry(uid: u32, digest: &str) -> PathBuf {
    Path::new(CACHE).join(NODE).join("images").join(format!("u{uid}-{}.sqfs", digest.trim_start_matches("sha256:")))
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn bob_cannot_read_alices_store_or_cache_entries_by_their_paths() {
    let _serial = support::serial();
    let tb = pushed();
    let a = Alice::new(tb);
    let img = image("small");
    ok(&a.sh(&format!("shoal pull -q {img}")));
    let info = a.info(&img);
    let sqfs = info["squashfs"].as_str().unwrap().to_string();
    // Staged on n1 for alice.
    let out = ok(&a.sh(&format!("srun -N1 -w {NODE} --image={img} /bin/cat /etc/i18-small")));
    assert!(out.contains("small"), "{out}");
    let entry = cache_entry(uid(&tb.user), info["digest"].as_str().unwrap());
    assert!(entry.is_file(), "alice's image is not staged at {}", entry.display());
    let store = a.dir.join("data/shoal");
    for (what, cmd) in [
        ("the node's cached images", format!("ls {CACHE}/{NODE}/images")),
        ("the node's job references", format!("ls {CACHE}/{NODE}/refs")),
        ("her image", format!("cat '{sqfs}' > /dev/null")),
        ("her tags", format!("ls '{}/tags'", store.display())),
        ("her store", format!("ls '{}'", store.display())),
        ("her cache entry", format!("cat '{}' > /dev/null", entry.display())),
    ] {
        let e = fails(&bob(&cmd));
        assert!(e.contains("Permission denied"), "bob reading {what}: {e}");
    }
    // Not through Shoal either: as a path to `shoal run` and to srun.
    let e = fails(&bob(&format!("'{}' run '{sqfs}' -- /bin/true", tb.shoal().display())));
    assert!(e.contains("Permission denied") || e.contains("permission denied"), "shoal run: {e}");
    let e = fails(&bob(&format!("srun -N1 -w {NODE} --image='{sqfs}' /bin/true")));
    assert!(e.to_lowercase().contains("permission denied"), "srun: {e}");
}

/// A squashfs bob makes from busybox, whose /etc/i18-small says "poisoned".
fn bobs_image() -> (PathBuf, String, u64) {
    ok(&bob(
        "set -e; rm -rf evil evil.sqfs; mkdir -p evil/bin evil/etc; cp /bin/busybox evil/bin/; \
         for a in sh cat; do ln -s busybox evil/bin/$a; done; echo poisoned > evil/etc/i18-small; \
         mksquashfs evil evil.sqfs -quiet -no-progress -noappend >/dev/null",
    ));
    let path = PathBuf::from("/home/bob/evil.sqfs");
    (path.clone(), sha256(&path), std::fs::metadata(&path).unwrap().len())
}

#[test]
fn a_pin_bob_forges_with_alices_digest_poisons_nothing_of_hers() {
    let _serial = support::serial();
    let tb = pushed();
    let a = Alice::new(tb);
    let img = image("small");
    ok(&a.sh(&format!("shoal pull -q {img}")));
    let info = a.info(&img);
    let digest = info["digest"].as_str().unwrap().to_string();
    let (evil, evil_sha, evil_size) = bobs_image();
    let alice_entry = cache_entry(uid(&tb.user), &digest);
    let bob_entry = cache_entry(uid(BOB), &digest);
    ok(&tb.root(&format!("rm -f '{}' '{}'", alice_entry.display(), bob_entry.display())));
    // Bob's job claims alice's digest for his own bytes, as a user image
    // and as a site image; the pin is his to forge (srun reuses a pin in
    // the environment whose `requested` matches --image).
    let pin = |scope: &str| {
        serde_json::json!({
            "requested": img, "digest": digest, "scope": scope, "squashfs": evil,
            "sha256": evil_sha, "size": evil_size,
        })
        .to_string()
    };
    let user_pin = pin("user");
    let out = ok(&bob(&format!(
        "SHOAL_IMAGE_PIN='{user_pin}' srun -N1 -w {NODE} --image={img} /bin/cat /etc/i18-small"
    )));
    // He runs his own bytes, staged under his own key.
    assert!(out.contains("poisoned"), "{out}");
    assert!(bob_entry.is_file(), "no entry of bob's: {}", bob_entry.display());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&bob_entry).unwrap().uid(), uid(BOB));
    let site_pin = pin("site");
    let e = fails(&bob(&format!("SHOAL_IMAGE_PIN='{site_pin}' srun -N1 -w {NODE} --image={img} /bin/true")));
    assert!(e.contains("not in the site store"), "site-scope forgery: {e}");
    let site_entry = Path::new(CACHE).join(NODE).join("images").join(format!("{}.sqfs", digest.trim_start_matches("sha256:")));
    assert!(!site_entry.exists(), "bob's bytes became a site cache entry: {}", site_entry.display());
    // Alice's job on the same node runs her image, not his.
    let out = ok(&a.sh(&format!("srun -N1 -w {NODE} --image={img} /bin/cat /etc/i18-small")));
    assert!(out.contains("small") && !out.contains("poisoned"), "alice ran: {out}");
    assert_eq!(sha256(&alice_entry), info["squashfs_sha256"].as_str().unwrap());
    ok(&tb.root(&format!("rm -f '{}'", bob_entry.display())));
}

/// strace on slurmd of n1 and its children until dropped, slowing every
/// pread (the stage's copy reads the user's file so) by `us`.
struct Slowed(Child);

impl Slowed {
    fn attach(us: u32) -> Slowed {
        let pid = Command::new("pgrep").args(["-f", &support::slurmd_pattern(NODE)]).output().unwrap();
        let pid = String::from_utf8_lossy(&pid.stdout).split_whitespace().next().expect("slurmd of n1").to_string();
        let child = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=pread64", "-e"])
            .arg(format!("inject=pread64:delay_enter={us}"))
            .args(["-p", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (Debian package `strace`)");
        std::thread::sleep(Duration::from_millis(500));
        Slowed(child)
    }
}

impl Drop for Slowed {
    fn drop(&mut self) {
        // SIGTERM detaches; SIGKILL if that has not worked within 5 s.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bob_racing_alices_stage_opens_nothing() {
    let _serial = support::serial();
    let tb = pushed();
    let a = Alice::new(tb);
    let img = image("big");
    ok(&a.sh(&format!("shoal pull -q {img}")));
    let info = a.info(&img);
    let entry = cache_entry(uid(&tb.user), info["digest"].as_str().unwrap());
    ok(&tb.root(&format!("rm -f '{}'", entry.display())));
    // Bob can't list the copies in progress; told their names (as if he
    // guessed them), he tries to open each while alice's copy runs
    // (slowed to a few seconds).
    let e = fails(&bob(&format!("ls {CACHE}/{NODE}/tmp")));
    assert!(e.contains("Permission denied"), "{e}");
    let (mut seen, mut got) = (0, 0);
    std::thread::scope(|s| {
        let job = s.spawn(|| {
            let _slow = Slowed::attach(100_000);
            a.sh(&format!("srun -N1 -w {NODE} --image={img} /bin/cat /big/mark"))
        });
        let tmp = Path::new(CACHE).join(NODE).join("tmp");
        while !job.is_finished() {
            let names: Vec<PathBuf> = std::fs::read_dir(&tmp).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            for f in names.iter().chain(std::iter::once(&entry)).filter(|f| f.exists()) {
                seen += 1;
                let out = bob(&format!("head -c 4096 '{}' | wc -c", f.display()));
                if String::from_utf8_lossy(&out.stdout).trim() != "0" {
                    got += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(ok(&job.join().unwrap()).trim().len(), 64);
    });
    assert!(seen > 0, "bob never tried the copy (the race was not run)");
    assert_eq!(got, 0, "bob read alice's image while it was staged ({got} of {seen} tries)");
}

#[test]
fn bob_cannot_see_or_join_alices_named_container() {
    let _serial = support::serial();
    let tb = pushed();
    let a = Alice::new(tb);
    let img = image("small");
    ok(&a.sh(&format!("shoal pull -q {img}")));
    // Alice's job keeps a named container with a secret in its writable
    // layer, and holds it running while bob tries.
    let job = ok(&a.sh(&format!(
        "sbatch --parsable -N1 -w {NODE} -o job.out --wrap \"srun --container-name=mu --container-image={img} /bin/sh -c 'echo alice-secret > /mu-secret; touch /tmp/up; sleep 20'\""
    )));
    let job = job.trim().to_string();
    let dir = PathBuf::from(format!("/var/lib/shoal/containers/{NODE}/job-{job}/name-mu"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !dir.join("layer/upper/mu-secret").exists() {
        assert!(std::time::Instant::now() < deadline, "alice's container never wrote its secret");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its layer is out of bob's reach by path.
    for path in [dir.join("layer"), dir.join("layer/upper"), dir.join("layer/upper/mu-secret")] {
        let e = fails(&bob(&format!("ls -la '{}' || cat '{}'", path.display(), path.display())));
        assert!(e.contains("Permission denied"), "bob reading {}: {e}", path.display());
    }
    // The same name in bob's own job is bob's own container: alice's
    // secret is not in it, and `exec` finds no running one of his.
    ok(&bob(&format!("SSL_CERT_FILE='{}' '{}' pull -q {img}", tb.ca_cert.display(), tb.shoal().display())));
    let out = ok(&bob(&format!(
        "srun -N1 -w {NODE} --container-name=mu --container-image={img} /bin/sh -c 'cat /mu-secret 2>&1; echo done'"
    )));
    assert!(!out.contains("alice-secret") && out.contains("done"), "{out}");
    let e = fails(&bob(&format!("srun -N1 -w {NODE} --container-name=mu:exec /bin/cat /mu-secret")));
    assert!(!e.contains("alice-secret"), "{e}");
    // Nor through alice's running processes: their mount namespace is not
    // his to enter.
    let pid = ok(&tb.root(&format!("pgrep -u {} -x sleep | head -1", tb.user)));
    let e = fails(&bob(&format!("nsenter -t {} -m cat /mu-secret", pid.trim())));
    assert!(!e.contains("alice-secret"), "{e}");
    ok(&tb.root(&format!("scancel {job}")));
}
