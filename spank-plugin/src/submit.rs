//! srun, sbatch and salloc: the user is still at the prompt, so everything
//! that can be checked is checked here and reported on their terminal.

use crate::options;
use crate::spank::Spank;

/// After all options are parsed.
pub fn post_opt(_spank: &Spank) -> Result<(), String> {
    options::with_request(|req| match &req.image {
        None => Ok(()),
        // Staging and entering images on the nodes is not built yet; refuse
        // instead of silently running the job on the host.
        Some(image) => Err(format!(
            "--image={image}: this Shoal build cannot run tasks inside images yet; \
             submit without --image"
        )),
    })
}
