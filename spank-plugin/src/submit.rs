//! srun, sbatch and salloc: the user is still at the prompt, so everything
//! that can be checked is checked here and reported on their terminal.

use crate::options;
use crate::spank::Spank;

/// After all options are parsed.
pub fn post_opt(_spank: &Spank) -> Result<(), String> {
    // SHOAL_* defaults come from the submitting command's own environment
    // (spank_getenv only reads a job's environment, in slurmstepd).
    options::apply_env_defaults_now(|name| std::env::var(name).ok())?;
    let req = options::request();
    if let Some(modules) = &req.modules {
        if modules.iter().any(|m| m != "none") {
            return Err(format!(
                "--module={}: this site defines no Shoal modules; drop --module",
                modules.join(",")
            ));
        }
    }
    match &req.image {
        None => Ok(()),
        // Staging and entering images on the nodes is not built yet; refuse
        // instead of silently running the job on the host.
        Some(image) => Err(format!(
            "--image={image}: this Shoal build cannot run tasks inside images yet; \
             submit without --image"
        )),
    }
}
