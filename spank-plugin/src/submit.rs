//! srun, sbatch and salloc: the user is still at the prompt, so everything
//! that can be checked is checked here and reported on their terminal, and
//! the image is pinned to a digest for the whole job.

use std::path::Path;

use shoal::container::UserMount;
use shoal::image::pull::{pull, PullOptions};
use shoal::image::store::{Store, StoreError, StoredImage};
use shoal::ImageSpec;

use crate::options::{self, Request};
use crate::pin::{self, Pin, Scope};
use crate::spank::Spank;

/// After all options are parsed.
pub fn post_opt(spank: &Spank) -> Result<(), String> {
    // SHOAL_* defaults come from the submitting command's own environment
    // (spank_getenv only reads a job's environment, in slurmstepd).
    options::apply_env_defaults_now(|name| std::env::var(name).ok())?;
    let req = options::request();
    let config = crate::site::config();
    check_request(&req, &config)?;
    let Some(image) = req.image.as_ref().filter(|_| !req.no_image) else {
        // A pin inherited from an enclosing image job must not put this
        // step (`--no-image`, or a job without an image) into that image.
        std::env::remove_var(pin::ENV);
        return Ok(());
    };
    let pin = pin_image(image, &config)?;
    let value = pin.to_env();
    // The job's environment carries the pin to every step (nested srun
    // reuses it); the job control environment carries it to the prolog.
    std::env::set_var(pin::ENV, &value);
    spank
        .job_control_setenv(pin::JOB_CONTROL_ENV, &value)
        .map_err(|e| format!("cannot pass the image to the prolog: {e}"))?;
    Ok(())
}

/// Checks modules and mounts against the site config now, so a typo fails
/// at the prompt rather than on every node.
fn check_request(req: &Request, config: &shoal::Config) -> Result<(), String> {
    if let Some(modules) = &req.modules {
        shoal::inject::select_modules(config, modules).map_err(|e| format!("--module={}: {e}", modules.join(",")))?;
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    for spec in &req.mounts {
        let mount = UserMount::parse(spec, &cwd).map_err(|e| format!("--mount={spec:?}: {e}"))?;
        mount
            .check(&config.mounts.allowed_targets)
            .map_err(|e| format!("--mount={spec:?}: {e}"))?;
    }
    Ok(())
}

/// Resolves `--image` to one immutable image, as the user (this process
/// runs as the submitting user). A step inside a job whose pin came from
/// the same `--image` reuses it: the tag may have moved since submission.
fn pin_image(image: &ImageSpec, config: &shoal::Config) -> Result<Pin, String> {
    let requested = image.to_string();
    let mode = options::request().select.unwrap_or(config.image.select);
    if let Some(mut existing) = std::env::var(pin::ENV).ok().and_then(|v| Pin::from_env(&v).ok()) {
        if existing.requested == requested {
            // A step may ask for another choice mode from the job's index.
            if let Some(m) = options::request().select {
                existing.select = m;
            }
            return Ok(existing);
        }
    }
    match image {
        ImageSpec::File(path) => {
            let pin = pin_file(path, requested)?;
            // A squashfs file has no registry identity: the policy's default.
            if let Some(policy) = shoal::image::trust::site_policy(config).map_err(|e| e.to_string())? {
                shoal::image::trust::check(&policy, shoal::image::trust::Identity::Local, &pin.digest, None)
                    .map_err(|e| e.to_string())?;
            }
            Ok(pin)
        }
        spec => {
            let store = Store::open(config);
            // An image index: pinned by its digest; each node chooses from
            // the same bytes (choose.rs).
            let index_pin = |store: &Store| -> Result<Option<Pin>, String> {
                let Some((index, root)) = store.find_index(spec).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let (identity, signatures) = index_trust(config, store, root, spec, &index)?;
                Ok(Some(Pin {
                    requested: requested.clone(),
                    digest: index.digest.clone(),
                    scope: root.scope(),
                    squashfs: index.path.clone(),
                    sha256: index.digest.hex().to_string(),
                    size: index.bytes.len() as u64,
                    index: true,
                    select: mode,
                    identity,
                    signatures,
                    verity: None,
                }))
            };
            if let Some(p) = index_pin(&store)? {
                return Ok(p);
            }
            let stored = match store.resolve(spec) {
                Err(StoreError::NotFound { .. }) if config.image.auto_pull => auto_pull(config, &store, spec)?,
                other => other.map_err(|e| e.to_string())?,
            };
            // What auto_pull just pulled may be an index.
            if let Some(p) = index_pin(&store)? {
                return Ok(p);
            }
            // The site image policy, now, on the stored signatures: an
            // image it refuses fails at the prompt (root checks again on
            // every node).
            shoal::image::trust::check_stored(config, &store, spec, &stored)?;
            Ok(Pin {
                requested,
                digest: stored.digest.clone(),
                scope: stored.scope,
                squashfs: stored.squashfs.clone(),
                sha256: stored.squashfs_sha256.clone(),
                size: stored.size,
                index: false,
                select: mode,
                identity: shoal::image::trust::stored_identity(spec, &stored).map(|r| r.to_string()),
                signatures: shoal::image::trust::stored_signatures(&store, &stored),
                verity: stored.verity_root.clone(),
            })
        }
    }
}

/// `image.auto_pull`: pull a missing registry image into the user's store
/// now, as the user, with one line on the terminal (the pull's own progress
/// bars would interleave with srun's output).
fn auto_pull(config: &shoal::Config, store: &Store, spec: &ImageSpec) -> Result<StoredImage, String> {
    let ImageSpec::Registry(r) = spec else {
        return Err(format!("{spec}: not in the site or your image store"));
    };
    eprintln!("shoal: {r} is not in your image store; pulling it (image.auto_pull)");
    let mut opts = PullOptions::new();
    opts.squash = config.image.squash_options();
    // From an index, every entry one of the site's nodes could run.
    for p in &config.image.platforms {
        opts.platforms.push(p.parse().map_err(|e| format!("image.platforms in the site config: {e}"))?);
    }
    pull(config, store, r, &opts, &|_| {})
        .map(|outcome| outcome.image)
        .map_err(|e| format!("automatic pull of {r} failed: {e}"))
}

/// The site image policy on every entry of a stored index (each node
/// may choose any of them), and what the pin carries for root's re-check
/// on the node: the identity and the entries' stored signatures together.
fn index_trust(
    config: &shoal::Config,
    store: &Store,
    root: &shoal::image::store::StoreRoot,
    spec: &ImageSpec,
    index: &shoal::image::store::StoredIndex,
) -> Result<(Option<String>, Option<shoal::image::trust::SignatureSet>), String> {
    use shoal::image::trust;
    let mut identity = None;
    let mut all: Option<trust::SignatureSet> = None;
    for digest in index.variants.values() {
        let stored = root.image(digest).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!("image {spec}: entry {digest} of its index is no longer stored; pull it again with `shoal pull {spec}`")
        })?;
        trust::check_stored(config, store, spec, &stored)?;
        identity = identity.or_else(|| trust::stored_identity(spec, &stored).map(|r| r.to_string()));
        if let Some(set) = trust::stored_signatures(store, &stored) {
            all.get_or_insert_with(Default::default).merge(set);
        }
    }
    Ok((identity, all))
}

/// A squashfs file the user named: checked and hashed now, so every node
/// can verify its copy; its digest is the file's own sha256.
fn pin_file(path: &Path, requested: String) -> Result<Pin, String> {
    let path = std::fs::canonicalize(path).map_err(|e| format!("--image={}: {e}", path.display()))?;
    let summary = shoal::image::convert::check_squashfs(&path).map_err(|e| format!("--image={}: {e}", path.display()))?;
    Ok(Pin {
        requested,
        digest: format!("sha256:{}", summary.sha256).parse().map_err(|e| format!("--image={}: {e}", path.display()))?,
        scope: Scope::User,
        squashfs: path,
        sha256: summary.sha256,
        size: summary.size,
        index: false,
        select: Default::default(),
        identity: None,
        signatures: None,
        verity: None,
    })
}
