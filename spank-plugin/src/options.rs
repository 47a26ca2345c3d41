//! The options Shoal adds to srun, sbatch and salloc, and their values.
//!
//! Slurm calls an option's callback with no handle and may call it more than
//! once for the same option (from `#SBATCH` lines, the command line, and
//! again in slurmstepd), so values live in process-wide state: a repeat with
//! the same value is fine, a conflicting one is an error.

use std::sync::{Mutex, MutexGuard, PoisonError};

use shoal::{Config, ImageSpec};

use crate::spank::{self, OptionSpec, Spank, SpankError};

/// What the user asked for, as parsed from their options.
#[derive(Debug, Default)]
pub struct Request {
    pub image: Option<ImageSpec>,
}

#[derive(Default)]
struct State {
    config: Option<Config>,
    request: Request,
}

static STATE: Mutex<State> = Mutex::new(State {
    config: None,
    request: Request { image: None },
});

fn state() -> MutexGuard<'static, State> {
    // A panic while holding the lock is already reported by `guard`; the
    // state itself stays consistent (plain values), so keep going.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn set_config(config: Config) {
    state().config = Some(config);
}

/// Runs `f` on the request parsed so far.
pub fn with_request<T>(f: impl FnOnce(&Request) -> T) -> T {
    f(&state().request)
}

use std::os::raw::{c_char, c_int};

const IMAGE_OPT: c_int = 1;

static IMAGE: OptionSpec = OptionSpec {
    name: c"image",
    arg: Some(c"REF"),
    usage: c"[shoal] Run the job's tasks inside the container image REF: NAME[:TAG], \
REGISTRY[:PORT]/NAME[:TAG], NAME@sha256:DIGEST, docker://..., id:DIGEST, or a path \
to a squashfs file. Pull it first with `shoal pull REF`.",
    val: IMAGE_OPT,
    callback: image_callback,
};

pub fn register(spank: &Spank) -> Result<(), String> {
    spank
        .register_option(&IMAGE)
        .map_err(|e: SpankError| format!("cannot register --image: {e}"))
}

/// Records a value for `--image`, refusing a malformed or conflicting one.
pub fn set_image(value: Option<&str>) -> Result<(), String> {
    let value = value.unwrap_or("");
    let spec: ImageSpec = value
        .parse()
        .map_err(|e| format!("--image={value:?}: {e}"))?;
    let mut st = state();
    match &st.request.image {
        Some(prev) if *prev != spec => Err(format!(
            "--image given twice with different values ({prev} and {spec}); give it once"
        )),
        _ => {
            st.request.image = Some(spec);
            Ok(())
        }
    }
}

unsafe extern "C" fn image_callback(_val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
    // SAFETY: Slurm passes null or a NUL-terminated option value.
    let value = unsafe { spank::optarg(optarg) };
    crate::guard("--image", || set_image(value.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process-wide state, so it runs the cases in order.
    #[test]
    fn image_values() {
        let e = set_image(Some("::bad::")).unwrap_err();
        assert!(e.contains("--image=\"::bad::\""), "{e}");
        assert!(set_image(Some("")).unwrap_err().contains("empty image reference"));
        assert!(set_image(None).is_err());
        set_image(Some("127.0.0.1:5443/shoal/busybox:1")).unwrap();
        set_image(Some("127.0.0.1:5443/shoal/busybox:1")).unwrap();
        let e = set_image(Some("debian:12")).unwrap_err();
        assert!(e.contains("different values"), "{e}");
        with_request(|r| assert_eq!(r.image.as_ref().unwrap().to_string(), "127.0.0.1:5443/shoal/busybox:1"));
    }
}
