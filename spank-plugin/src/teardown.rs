//! Cleanup when a step and a job end: the step's container state in
//! slurmstepd's exit, and in the job epilog everything the job left on this
//! node (container state of steps whose slurmstepd was killed, the job's
//! references in the node cache). Idempotent, so a repeated or overlapping
//! call after `scancel` or a slurmd restart is harmless.

use shoal::container::{self, Mode};
use shoal::stage::NodeCache;

use crate::job;
use crate::layers::{self, Which};
use crate::spank::Spank;

/// slurmstepd, at the end of a step (root).
pub fn step_exit(spank: &Spank) -> Result<(), String> {
    if !crate::task::wanted(spank) {
        return Ok(());
    }
    let node = job::node_name()?;
    let job_id = spank.job_id().map_err(|e| e.to_string())?;
    let step_id = spank.step_id().map_err(|e| e.to_string())?;
    let key = job::share_key(job_id, step_id, &node);
    container::teardown(&key, Mode::Privileged, 0).map_err(|e| e.to_string())?;
    // An unnamed writable container's layer: its processes are gone.
    let config = crate::options::config();
    let uid = spank.uid().map_err(|e| e.to_string())?;
    layers::remove(&layers::container_dir(&config, &node, job_id, uid, &Which::Step(job::step_name(step_id))))
}

/// The job epilog (root), on every node of the job.
pub fn epilog(config: &shoal::Config, job_id: u32) -> Result<(), String> {
    let node = job::node_name()?;
    let base = container::runtime_base(Mode::Privileged, 0);
    let prefix = format!("{job_id}.");
    let suffix = format!(".{node}");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(&suffix) {
                container::teardown(&name, Mode::Privileged, 0).map_err(|e| e.to_string())?;
            }
        }
    }
    // Writable layers and job-scoped named containers of the job.
    layers::remove(&layers::job_dir(config, &node, job_id))?;
    if config.node.cache_dir.join(&node).is_dir() {
        let cache = NodeCache::open(&config.node.cache_dir, &node, config.node.cache_size.0).map_err(|e| e.to_string())?;
        cache.release_job(job_id).map_err(|e| e.to_string())?;
    }
    Ok(())
}
