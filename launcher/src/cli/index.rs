//! `shoal index create`: an image index from images already in a registry,
//! one entry per image with the platform and annotations Shoal's selection
//! reads, pushed to a tag (see `shoal::image::registry::compose`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args, Subcommand};
use shoal::image::registry::compose::{self, EntrySpec};
use shoal::image::registry::ClientOptions;
use shoal::Config;

#[derive(Debug, Subcommand)]
pub enum IndexCmd {
    /// Build an image index from images in a registry and push it to a tag.
    #[command(after_help = AFTER_HELP)]
    Create(CreateArgs),
}

const AFTER_HELP: &str = "\
Each entry's os, architecture and variant come from its image config unless given.
Per os/architecture the plainest entry (no GPU, lowest CPU level, no target, features
or MPI) is moved first, with a warning: runtimes other than Shoal take the first entry
of their platform. Entries in another repository are copied into the index's one
(blobs mounted within a registry, streamed from another registry).

Example:
  shoal index create reg.example.org/team/app:2 \\
      --entry reg.example.org/team/app:2-generic \\
      --entry reg.example.org/team/app:2-v3,variant=v3 \\
      --entry reg.example.org/team/app:2-zen4,target=zen4 \\
      --entry reg.example.org/team/app:2-cuda,variant=v3,gpu=yes,cuda=12.2 \\
      --entry reg.example.org/team/app:2-mpich,mpi=mpich,mpi-version=4.1

The same as a spec file (`--spec app.toml`):
  index = \"reg.example.org/team/app:2\"
  [[entry]]
  image = \"reg.example.org/team/app:2-generic\"
  [[entry]]
  image = \"reg.example.org/team/app:2-zen4\"
  target = \"zen4\"          # also: platform, variant, features = [..], gpu = true,
                            # cuda, mpi, mpi-version, weight, annotations = { K = \"V\" }";

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where to push the index: REGISTRY/REPO:TAG (or `index` in the spec file).
    target: Option<String>,
    /// An image and what it needs: REF[,platform=OS/ARCH[/V]][,variant=V][,target=ARCHSPEC]
    /// [,features=F1+F2][,gpu=yes][,cuda=VER][,mpi=IMPL][,mpi-version=VER][,weight=N]
    /// [,annotation=KEY=VALUE]. Repeat once per entry, in order.
    #[arg(long = "entry", value_name = "REF[,KEY=VALUE...]", value_parser = compose::parse_entry)]
    entries: Vec<EntrySpec>,
    /// A TOML spec file with `[[entry]]` tables (the same keys); its entries come
    /// before any --entry.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// An annotation of the index itself (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Print the index JSON (the exact bytes that would be pushed) and push nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print only the index digest.
    #[arg(short, long)]
    quiet: bool,
    /// `--tls-verify=false` skips certificate checks (a lab registry only).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    tls_verify: bool,
}

pub fn run(cmd: IndexCmd, config_path: &Path) -> Result<ExitCode> {
    match cmd {
        IndexCmd::Create(args) => create(args, config_path),
    }
}

fn create(args: CreateArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let mut spec = match &args.spec {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the spec file {}", p.display()))?;
            compose::read_spec(&text, &p.display().to_string()).map_err(anyhow::Error::msg)?
        }
        None => compose::IndexSpec::default(),
    };
    spec.entries.extend(args.entries);
    let mut annotations: BTreeMap<String, String> = spec.annotations;
    for a in &args.annotations {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--annotation {a:?}: want KEY=VALUE");
        };
        annotations.insert(k.to_string(), v.to_string());
    }
    let target = match (args.target, spec.index) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => bail!(
            "no index to push to: give REGISTRY/REPO:TAG, or `index = \"...\"` in the spec file"
        ),
    };
    let mut opts = ClientOptions::from_env();
    if !args.tls_verify {
        opts.tls_verify = Some(false);
    }
    let built = compose::build(&config, &opts, &target, &spec.entries, &annotations)?;
    for w in &built.warnings {
        eprintln!("shoal: warning: {w}");
    }
    if args.dry_run {
        std::io::stdout().write_all(&built.bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<String> = built
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| format!("  [{i}] {} {} ({})", e.digest, compose::label(e), e.source))
        .collect();
    let target = built.target.clone();
    let pushed = compose::push(built)?;
    if args.quiet {
        println!("{}", pushed.digest);
        return Ok(ExitCode::SUCCESS);
    }
    for (line, copy) in lines.iter().zip(&pushed.copies) {
        let how = match copy {
            None => String::new(),
            Some(c) if c.present => ", already in the repository".to_string(),
            Some(c) => format!(
                ", copied in ({} blob{} mounted, {} streamed, {} there already)",
                c.mounted,
                if c.mounted == 1 { "" } else { "s" },
                c.copied,
                c.had
            ),
        };
        println!("{line}{how}");
    }
    println!(
        "pushed image index {} as {target} ({} entr{}); pin it as {}",
        pushed.digest,
        lines.len(),
        if lines.len() == 1 { "y" } else { "ies" },
        target.pinned(pushed.digest.clone())
    );
    Ok(ExitCode::SUCCESS)
}
