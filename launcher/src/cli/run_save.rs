//! `shoal run --save PATH`: the container's writable layer lives in a
//! private directory of the caller's (under `$TMPDIR`) instead of a tmpfs;
//! the command runs in a child, and when it has exited the image plus the
//! layer are written to PATH by `shoal::save` (the writer the plugin's
//! `--container-save` uses), as the caller, atomically, with the image's
//! run settings. The layer is removed afterwards, whatever happened.
//!
//! The command is then not this process: `shoal` waits for it, ignoring
//! the terminal's SIGINT and SIGQUIT (the command gets them, as under a
//! shell's `system()`), and exits with its status.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Uid};
use shoal::container::{Plan, RunConfig, Share, UpperLayer};
use shoal::image::convert::SquashOptions;
use shoal::image::manifest::ImageConfig;
use shoal::save::{self, Marks};
use shoal::Config;

/// The layer directory of one `--save` run and where the image goes.
pub struct SaveLayer {
    dir: PathBuf,
    out: PathBuf,
}

impl SaveLayer {
    /// Checks that a file can be made beside `out`, then makes the layer
    /// directory (mode 0700) with its `upper` and `work`.
    pub fn prepare(out: &Path) -> Result<SaveLayer> {
        let fail = |e: String| anyhow!("--save={}: {e}; nothing was run", out.display());
        let (dir, probe) = save::temp_beside(out, "check").map_err(fail)?;
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| fail(format!("cannot create a file in {} ({e}): give a path in a directory you can write", dir.display())))?;
        let _ = std::fs::remove_file(&probe);
        let template = std::env::temp_dir().join("shoal-save-XXXXXX");
        let layer = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("--save: cannot make a layer directory in {}", std::env::temp_dir().display()))?;
        let made = SaveLayer { dir: layer, out: out.to_path_buf() };
        for d in ["upper", "work"] {
            std::fs::create_dir(made.dir.join(d)).with_context(|| format!("--save: cannot make {}", made.dir.join(d).display()))?;
        }
        Ok(made)
    }

    /// The layer as the plan's upper layer.
    pub fn upper(&self) -> UpperLayer {
        UpperLayer { upper: self.dir.join("upper"), work: self.dir.join("work"), own_dirs: false }
    }

    /// Runs the container in a child (`run` never returns there unless it
    /// failed), waits for it, saves, and returns the command's status.
    pub fn run_then_save(self, plan: &Plan, cfg: &Config, config: &RunConfig, run: fn(&Plan, Option<&Share>) -> ExitCode) -> Result<ExitCode> {
        // SAFETY: `shoal run` is single-threaded; the child goes on to
        // build the container exactly as an unforked launch does.
        match unsafe { fork() }.context("--save: fork")? {
            ForkResult::Child => Ok(run(plan, None)),
            ForkResult::Parent { child } => {
                shoal::container::ignore_signals(&[libc::SIGINT, libc::SIGQUIT]);
                let status = loop {
                    match waitpid(child, None) {
                        Ok(WaitStatus::Exited(_, code)) => break code,
                        Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                        Ok(_) => continue,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(e) => break { eprintln!("shoal: --save: waiting for the command: {e}"); 125 },
                    }
                };
                let saved = self.save(plan, cfg, config);
                self.remove();
                saved?;
                Ok(ExitCode::from(u8::try_from(status).unwrap_or(125)))
            }
        }
    }

    fn save(&self, plan: &Plan, cfg: &Config, config: &RunConfig) -> Result<()> {
        let fail = |e: String| anyhow!("--save={}: {e}; nothing was written", self.out.display());
        let upper = self.dir.join("upper");
        let fd = save::open_dir(None, &upper, libc::O_PATH).map_err(|e| fail(format!("{}: {e}", upper.display())))?;
        // Root's own overlay keeps trusted.* markers; a user's, user.*.
        let marks = if Uid::effective().is_root() { Marks::Trusted } else { Marks::User };
        let opaque = save::overlay_marks(fd.as_fd(), marks).map_err(fail)?;
        let opts = SquashOptions { compression: cfg.image.compression, block_size: cfg.image.block_size };
        let image_config = ImageConfig {
            env: config.env.clone(),
            entrypoint: config.entrypoint.clone(),
            cmd: config.cmd.clone(),
            workdir: config.workdir.clone(),
            ..ImageConfig::default()
        };
        let summary = save::write(&plan.root.squashfs, Some((fd.as_fd(), &opaque)), &self.out, &opts, &image_config).map_err(fail)?;
        eprintln!("shoal: saved the container to {} ({} entries)", self.out.display(), summary.entries);
        Ok(())
    }

    /// Removes the layer directory (overlayfs leaves its work directory
    /// mode 0: made searchable first).
    fn remove(&self) {
        fn open_up(p: &Path) {
            use std::os::unix::fs::PermissionsExt;
            let Ok(md) = std::fs::symlink_metadata(p) else { return };
            if md.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    open_up(&e.path());
                }
            }
        }
        open_up(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("shoal: --save: could not remove the layer {}: {e}", self.dir.display());
        }
    }
}
