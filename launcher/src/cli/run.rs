//! `shoal run [OPTIONS] IMAGE [--] CMD [ARGS...]`: builds the request from
//! the command line and the caller's identity, plans, and runs (or prints
//! the plan with `--dry-run`). The command replaces this process.
//!
//! `--module`: the image is checked against the modules as the caller
//! (unprivileged: the user; root with `--user`: the user's ids), and a
//! refusal is one line naming the conflicting files, before anything is
//! mounted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use nix::unistd::{Gid, Group, Uid, User};
use shoal::image::store::{Scope, Store};
use shoal::container::{self, EnterError, ExecError, Identity, RunConfig, RunImage, RunRequest, Share, UserMount};
use shoal::inject::render_table;
use shoal::inject::TaskGpus;
use shoal::{Config, ImageSpec};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Print the plan (mounts in order with flags, env, ids, cwd, argv) and exit.
    #[arg(long)]
    dry_run: bool,
    /// Prepend the image's Entrypoint to the command.
    #[arg(long)]
    entrypoint: bool,
    /// Writable root: a tmpfs over the image, discarded at exit.
    #[arg(long)]
    writable: bool,
    /// Writable root, saved when the command exits as a squashfs image at
    /// PATH (with the image's run settings), which `shoal run PATH` runs.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["user", "share_key", "dry_run"])]
    save: Option<PathBuf>,
    /// Set a variable inside (wins over the image's and the caller's).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Read NAME=VALUE lines from a file (before --env settings).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Bind a host path: SRC:DST[:ro]; repeatable.
    #[arg(long = "mount", short = 'm', value_name = "SRC:DST[:ro]")]
    mounts: Vec<String>,
    /// Shifter's spelling: SRC:DST[:ro], several separated by `;`.
    #[arg(long = "volume", value_name = "SRC:DST[:ro][;...]")]
    volumes: Vec<String>,
    /// Root only: run as this user (as slurmstepd does for a job).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Share one container among PEERS processes that give the same KEY
    /// (JOB.STEP.NODENAME); the first builds it, the others join it.
    #[arg(long, value_name = "KEY", requires = "share_peers")]
    share_key: Option<String>,
    /// Exactly how many processes share the container.
    #[arg(long, value_name = "N", requires = "share_key")]
    share_peers: Option<u32>,
    /// Host-library modules from the site config (`NAME[,NAME]`,
    /// repeatable; `none` for no module); default: `[injection]
    /// default_modules`. `--dry-run` prints the per-library decisions.
    #[arg(long = "module", value_name = "NAME[,NAME]")]
    modules: Vec<String>,
    /// A squashfs file (`/path`, `./path`) or an image reference.
    image: String,
    /// The command and its arguments (default: the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The caller's terminal: the pty on stdin, stdout or stderr, if any.
fn terminal() -> Option<PathBuf> {
    use std::io::IsTerminal;
    let ttys = [std::io::stdin().is_terminal(), std::io::stdout().is_terminal(), std::io::stderr().is_terminal()];
    (0..3)
        .filter(|&fd| ttys[fd])
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .find(|p| p.starts_with("/dev/pts/"))
}

fn identity(user: &User) -> Result<Identity> {
    let name = std::ffi::CString::new(user.name.clone())?;
    let gids: Vec<Gid> = if Uid::effective() == user.uid {
        let mut g = vec![user.gid];
        g.extend(nix::unistd::getgroups()?.into_iter().filter(|x| *x != user.gid));
        g
    } else {
        nix::unistd::getgrouplist(&name, user.gid)?
    };
    let mut groups = Vec::new();
    for g in gids {
        if groups.iter().any(|(_, id)| *id == g.as_raw()) {
            continue;
        }
        let n = Group::from_gid(g).ok().flatten().map(|g| g.name).unwrap_or_else(|| g.to_string());
        groups.push((n, g.as_raw()));
    }
    Ok(Identity {
        name: user.name.clone(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir.display().to_string(),
        shell: user.shell.display().to_string(),
        groups,
    })
}

/// `own_file`: the caller opens a file it names with its own credentials
/// (not root acting for a user, who is not to read what the user cannot).
fn image(arg: &str, cwd: &Path, cfg: &Config, modules: &[String], own_file: bool) -> Result<RunImage> {
    let path = match ImageSpec::from_str(arg) {
        Ok(ImageSpec::File(p)) => p,
        // A bare file name that exists here is a file, not a Docker Hub name.
        _ if Path::new(arg).is_file() => PathBuf::from(arg),
        // Site store first, then the caller's own store.
        // An image index: this node's best entry (`shoal select` explains).
        Ok(spec) => {
            let store = Store::open(cfg);
            let stored = if store.find_index(&spec)?.is_some() {
                let node = shoal::select::resolve::this_node(cfg).map_err(anyhow::Error::msg)?;
                let job = shoal::select::resolve::job_request(cfg, modules);
                shoal::select::resolve::resolve(&store, &spec, &[node], &job)?.image
            } else {
                store.resolve(&spec)?
            };
            return Ok(shoal::resolve::run_image(&stored));
        }
        Err(e) => return Err(e.into()),
    };
    // `./x` and `a/./b` read better without the dots in messages and plans.
    let squashfs: PathBuf = cwd.join(path).components().filter(|c| *c != std::path::Component::CurDir).collect();
    // A path into the site store is a site image (the kernel-mount path
    // re-checks the opened file's owner and directories anyway).
    let in_site_store = cfg
        .store
        .site_dir
        .as_ref()
        .is_some_and(|d| squashfs.starts_with(d) && !squashfs.components().any(|c| c.as_os_str() == ".."));
    let scope = if in_site_store { Scope::Site } else { Scope::User };
    // A saved container's run settings are in its file (`image::trailer`).
    // Opened as the launch opens it (never waiting on a FIFO or device);
    // a path that is no image file is refused there, with its reason.
    let config = own_file
        .then(|| shoal::image::file::open_image_file(&squashfs, shoal::image::file::Links::Follow).ok())
        .flatten()
        .and_then(|f| shoal::image::trailer::read(&f))
        .map_or_else(RunConfig::default, |c| shoal::resolve::run_config(&c));
    Ok(RunImage { squashfs, config, scope, verity: None })
}

/// Whether `shoal` should fork its image server before it even parses its
/// command line (`args`: without the program name): the subcommand is
/// `run` (after the global `--config`), and no `--dry-run`, `--share-key`
/// (a dry run or a shared container may never build one) or help request
/// comes before the command's own `--`. Deciding wrong costs little either
/// way: a server never handed an image exits; without one the launch forks
/// it later.
pub fn wants_early_server(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    let mut args = args.into_iter();
    loop {
        match args.next() {
            Some(a) if a == "--config" => {
                args.next();
            }
            Some(a) if a.to_string_lossy().starts_with("--config=") => {}
            Some(a) if a == "run" => break,
            _ => return false,
        }
    }
    for a in args {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--dry-run" || a.starts_with("--share-key") || a == "--help" || a == "-h" || a == "--version" || a == "-V" {
            return false;
        }
    }
    true
}

/// `shoal run` is single-threaded and exec'd, not forked from a threaded
/// process, so its image server may run in the forked launcher (no exec of
/// squashfuse_ll). Unprivileged, it is forked first thing (see
/// [`wants_early_server`]), loading its libraries while this process parses
/// its arguments, reads the config and makes the namespaces.
pub fn start_early_server() {
    // Root's server is forked later (it drops to the user first); `run`
    // opts in for it. prefork opts in itself.
    if !Uid::effective().is_root() {
        // A failed fork: the launch forks the server when it needs it.
        let _ = container::prefork_fuse_server();
    }
}

pub fn run(args: RunArgs, config_path: &Path) -> Result<ExitCode> {
    let euid = Uid::effective();
    // Also for root (`--user`), whose server is forked when the image is
    // mounted (see `start_early_server`).
    container::serve_fuse_in_process();
    let cfg = Config::load(config_path)?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let user = match &args.user {
        Some(name) if !euid.is_root() => bail!("--user {name}: only root may run containers for another user"),
        Some(name) => User::from_name(name)?.ok_or_else(|| anyhow!("--user {name}: no such user"))?,
        None => User::from_uid(euid)?.ok_or_else(|| anyhow!("uid {euid} has no passwd entry; ask the admin to add one"))?,
    };
    let mut env = Vec::new();
    for f in &args.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read --env-file {}", f.display()))?;
        env.extend(container::parse_env_file(&text, &f.display().to_string())?);
    }
    for e in &args.env {
        env.push(container::parse_assignment(e)?);
    }
    let mut mounts = Vec::new();
    for m in &args.mounts {
        mounts.push(UserMount::parse(m, &cwd)?);
    }
    for v in &args.volumes {
        mounts.extend(UserMount::parse_volumes(v, &cwd)?);
    }
    // `--save`: checked, and its layer made, before anything else.
    let save = match &args.save {
        Some(out) => Some(super::run_save::SaveLayer::prepare(&cwd.join(out))?),
        None => None,
    };
    let host_env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let req = RunRequest {
        image: image(&args.image, &cwd, &cfg, &args.modules, args.user.is_none())?,
        argv: args.command,
        entrypoint: args.entrypoint,
        user: identity(&user)?,
        privileged: euid.is_root(),
        cwd,
        host_env,
        env,
        mounts,
        writable: args.writable || save.is_some(),
        terminal: terminal(),
        mount_home: true,
        slurm: Vec::new(),
        pmix: Vec::new(),
        injection: None,
        upper: save.as_ref().map(|s| s.upper()),
    };
    let run_config = req.image.config.clone();
    let mut plan = container::plan(&req, &cfg)?;
    let cuda = req.host_env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES").map(|(_, v)| v.as_str());
    // The modules are checked against the plan's image and command, then
    // become part of the plan (every mount is decided in `plan`).
    if let Some(assessment) = container::assess_modules(&plan, &cfg, &args.modules, cuda)? {
        if args.dry_run {
            println!("{}", render_table(&assessment.decisions));
        }
        let injection = container::Injection { plan: assessment.into_plan()?, task_gpus: TaskGpus::Step };
        plan = container::plan(&RunRequest { injection: Some(injection), ..req }, &cfg)?;
    }
    if args.dry_run {
        print!("{}", plan.render());
        return Ok(ExitCode::SUCCESS);
    }
    let share = match (args.share_key, args.share_peers) {
        (Some(key), Some(peers)) => Some(Share { key, peers }),
        _ => None,
    };
    if let Some(save) = save {
        return save.run_then_save(&plan, &cfg, &run_config, run_container);
    }
    Ok(run_container(&plan, share.as_ref()))
}

/// Becomes the container and execs the command; returns only on failure,
/// with the exit status that says what failed.
fn run_container(plan: &container::Plan, share: Option<&Share>) -> ExitCode {
    let err = match container::run(plan, share) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("shoal: {err}");
    // As a shell would say it: 127 not found, 126 not runnable, 125 the
    // container itself failed.
    ExitCode::from(match err {
        EnterError::Exec(ExecError::NotFound(..)) => 127,
        EnterError::Exec(ExecError::Exec(..)) => 126,
        _ => 125,
    })
}

#[cfg(test)]
mod tests {
    use super::wants_early_server;

    fn early(line: &str) -> bool {
        wants_early_server(line.split_whitespace().map(std::ffi::OsString::from))
    }

    #[test]
    fn early_server_only_for_a_run_that_builds_a_container() {
        assert!(early("run ./img.sqfs -- true"));
        assert!(early("--config /etc/x.toml run -e A=1 img true"));
        assert!(early("--config=/x.toml run img"));
        // A command's own options after `--` are its business.
        assert!(early("run img -- --dry-run --share-key k"));
        assert!(!early("run --dry-run img true"));
        assert!(!early("run --share-key k --share-peers 2 img true"));
        assert!(!early("run --share-key=k --share-peers=2 img true"));
        assert!(!early("run --help"));
        assert!(!early("pull img"));
        assert!(!early("--config x pull run"));
        assert!(!early(""));
    }
}
