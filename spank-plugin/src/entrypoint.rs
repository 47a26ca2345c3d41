//! `--container-entrypoint` (and the site's `[slurm] execute_entrypoint`):
//! each task runs the image's `ENTRYPOINT` with its own command as the
//! arguments, as `docker run IMAGE CMD...` does.
//!
//! Slurm 22.05 gives a plugin no way to add words before a task's command
//! (`spank_prepend_task_argv` came in 23.11), only the task's own `argv`
//! array, whose entries can be replaced but not added to. So, in the task
//! (the user, inside the container, just before Slurm's exec), `argv[0]` is
//! replaced by a small script in a memfd, `/proc/self/fd/N`, which closes
//! its descriptor and execs `ENTRYPOINT... ARGV0 "$@"`: the task's other
//! arguments reach the entrypoint untouched, word for word, on every Slurm
//! series. It needs the image's `/bin/sh` (entrypoints are nearly always
//! shell scripts); an image without one gets an error, not a skipped
//! entrypoint. The entrypoint's output is the task's output.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::spank::Spank;

/// Whether the step's tasks run the entrypoint: the user's choice, else the
/// site's default.
pub fn wanted(asked: Option<bool>, config: &shoal::Config) -> bool {
    asked.unwrap_or(config.slurm.execute_entrypoint)
}

/// The script that runs `entrypoint` before `argv0` and the task's other
/// arguments, closing its own descriptor `fd` first.
pub fn script(entrypoint: &[String], argv0: &str, fd: i32) -> String {
    let words: Vec<String> = entrypoint.iter().map(|w| quote(w)).collect();
    format!("#!/bin/sh\nexec {fd}<&-\nexec {} {} \"$@\"\n", words.join(" "), quote(argv0))
}

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// In the task (as the user, inside the container): makes the task exec the
/// entrypoint with its command. No `ENTRYPOINT` in the image: nothing to do.
pub fn apply(spank: &Spank, entrypoint: &[String]) -> Result<(), String> {
    if entrypoint.is_empty() {
        return Ok(());
    }
    if !std::path::Path::new("/bin/sh").exists() {
        return Err(
            "--container-entrypoint: the image has no /bin/sh, which running its entrypoint before the command needs; \
             give the entrypoint in the command instead (srun ... ENTRYPOINT CMD)"
                .into(),
        );
    }
    // Not close-on-exec: the script is read through it after the exec.
    // SAFETY: a NUL-terminated name and flags; the descriptor is owned here.
    let raw = unsafe { libc::memfd_create(c"shoal-entrypoint".as_ptr(), 0) };
    if raw < 0 {
        return Err(format!("--container-entrypoint: memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let argv = spank.argv().map_err(|e| e.to_string())?;
    let argv0 = argv.first().ok_or("--container-entrypoint: the task has no command")?;
    let text = script(entrypoint, argv0, fd.as_raw_fd());
    std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .write_all(text.as_bytes())
        .map_err(|e| format!("--container-entrypoint: {e}"))?;
    let program = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    spank.replace_argv0(program).map_err(|e| format!("--container-entrypoint: {e}"))?;
    // Stays open into the exec; the script closes it.
    std::mem::forget(fd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_execs_the_entrypoint_with_the_command() {
        let s = script(&["/usr/bin/tini".into(), "--".into(), "it's".into()], "/bin/echo", 7);
        assert_eq!(s, "#!/bin/sh\nexec 7<&-\nexec '/usr/bin/tini' '--' 'it'\\''s' '/bin/echo' \"$@\"\n");
        // Run for real: the words arrive intact.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script(&["printf".into(), "[%s]".into()], "a b", 9), "sh", "c'd", "$e"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "[a b][c'd][$e]");
        let mut c = shoal::Config::default();
        assert!(!wanted(None, &c) && wanted(Some(true), &c));
        // The site's key, as an admin writes it.
        c = shoal::Config::parse("[slurm]\nexecute_entrypoint = true\n", std::path::Path::new("shoal.toml")).unwrap();
        assert!(wanted(None, &c) && !wanted(Some(false), &c));
    }
}
