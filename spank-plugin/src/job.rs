//! Facts about the job on this node that every remote phase needs: the
//! Slurm node name, the container key, and the user as the image should
//! see them.

use shoal::container::Identity;

use crate::spank::Spank;

/// Slurm's step id for the batch script, as spank.h's SLURM_BATCH_SCRIPT.
const BATCH_STEP: u32 = 0xffff_fffb;
const EXTERN_STEP: u32 = 0xffff_fffc;
const INTERACTIVE_STEP: u32 = 0xffff_fffa;

/// The Slurm node name of this slurmd/slurmstepd. Several slurmd may share
/// one host (and a real cluster shares filesystems), so per-node state is
/// keyed by this name, never by the host name. slurmd puts it in the
/// environment of slurmstepd and of the prolog and epilog.
pub fn node_name() -> Result<String, String> {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "SLURMD_NODENAME is not set; is this running under slurmd?".to_string())
}

/// How a step id is written in container keys and messages.
pub fn step_name(step: u32) -> String {
    match step {
        BATCH_STEP => "batch".into(),
        EXTERN_STEP => "extern".into(),
        INTERACTIVE_STEP => "interactive".into(),
        n => n.to_string(),
    }
}

/// The extern step holds the job's allocation on a node (`PrologFlags=Contain`)
/// and, with `PrologFlags=RunInJob` (Slurm 24.05+), runs the job prolog. It
/// loads the plugin in remote context like a step, but it has no tasks and
/// no image of its own.
pub fn is_extern(step: u32) -> bool {
    step == EXTERN_STEP
}

pub fn is_batch(step: u32) -> bool {
    step == BATCH_STEP
}

/// Steps whose container is where the user runs `srun`: the batch script
/// and salloc's interactive step.
pub fn starts_steps(step: u32) -> bool {
    step == BATCH_STEP || step == INTERACTIVE_STEP
}

/// One container per (job, step, node): the key its tasks share.
pub fn share_key(job: u32, step: u32, node: &str) -> String {
    format!("{job}.{}.{node}", step_name(step))
}

/// The job's user, with the names the image's /etc/passwd and /etc/group
/// will carry, from the job credential's uid, gid and groups.
pub fn identity(spank: &Spank) -> Result<Identity, String> {
    let uid = spank.uid().map_err(|e| e.to_string())?;
    let gid = spank.gid().map_err(|e| e.to_string())?;
    let user = nix::unistd::User::from_uid(uid.into())
        .map_err(|e| format!("looking up uid {uid}: {e}"))?
        .ok_or_else(|| format!("uid {uid} has no passwd entry on this node"))?;
    let mut gids = vec![gid];
    for g in spank.supplementary_gids().map_err(|e| e.to_string())? {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    let groups = gids
        .into_iter()
        .map(|g| {
            let name = nix::unistd::Group::from_gid(g.into())
                .ok()
                .flatten()
                .map_or_else(|| g.to_string(), |gr| gr.name);
            (name, g)
        })
        .collect();
    Ok(Identity {
        name: user.name,
        uid,
        gid,
        home: user.dir.to_string_lossy().into_owned(),
        shell: user.shell.to_string_lossy().into_owned(),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_steps_and_nodes() {
        assert_eq!(share_key(12, 0, "n1"), "12.0.n1");
        assert_eq!(share_key(12, BATCH_STEP, "n2"), "12.batch.n2");
        assert_eq!(step_name(EXTERN_STEP), "extern");
        assert!(is_batch(BATCH_STEP) && !is_batch(0));
        assert!(is_extern(EXTERN_STEP) && !is_extern(BATCH_STEP) && !is_extern(0));
        assert!(starts_steps(BATCH_STEP) && starts_steps(INTERACTIVE_STEP) && !starts_steps(0));
    }
}
