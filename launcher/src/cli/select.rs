//! `shoal select REF [--json] [--node NAME=FILE ...] [--uniform]`: which
//! entry of an image index this node (or each listed node) would run, and
//! every entry's verdict and score.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use shoal::image::store::Store;
use shoal::select::{capabilities, index, resolve, NodeCapabilities};
use shoal::{Config, ImageSpec};

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// An image index as pulled (or `id:DIGEST` of one).
    #[arg(required_unless_present = "capabilities")]
    reference: Option<String>,
    /// Decide for another node: its name and a capabilities file (the
    /// JSON `shoal select --capabilities` prints, or one a node published).
    /// Repeatable; the site's `[nodes."NAME"]` overrides apply.
    #[arg(long = "node", value_name = "NAME=FILE")]
    nodes: Vec<String>,
    /// With several nodes: the one entry all of them accept.
    #[arg(long)]
    uniform: bool,
    /// The job's modules (`--module` of srun), for MPI-annotated entries.
    #[arg(long = "module", value_name = "NAME[,NAME]")]
    modules: Vec<String>,
    /// Print this node's capabilities as JSON (a capabilities file) and exit.
    #[arg(long)]
    capabilities: bool,
    /// JSON, for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SelectArgs, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let this = resolve::this_node(&config).map_err(anyhow::Error::msg)?;
    if args.capabilities {
        println!("{}", serde_json::to_string_pretty(&this)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut nodes: Vec<NodeCapabilities> = Vec::new();
    for n in &args.nodes {
        let (name, file) = n
            .split_once('=')
            .ok_or_else(|| anyhow!("--node {n:?}: want NAME=FILE"))?;
        let mut caps =
            capabilities::read_capabilities(&PathBuf::from(file)).map_err(anyhow::Error::msg)?;
        caps.node = name.to_string();
        nodes.push(
            caps.apply(config.nodes.get(name))
                .map_err(anyhow::Error::msg)?,
        );
    }
    if nodes.is_empty() {
        nodes.push(this);
    }
    let spec: ImageSpec = args.reference.as_deref().unwrap_or_default().parse()?;
    let store = Store::open(&config);
    let Some((idx, _)) = store.find_index(&spec)? else {
        let img = store.resolve(&spec)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "reference": spec.to_string(), "index": null, "chosen": img.digest })
            );
        } else {
            println!(
                "{spec} is a single image ({}), not an index: every node runs it as it is",
                img.digest
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let job = resolve::job_request(&config, &args.modules);
    let groups: Vec<Vec<NodeCapabilities>> = if args.uniform {
        vec![nodes.clone()]
    } else {
        nodes.iter().map(|n| vec![n.clone()]).collect()
    };
    let mut all_ok = true;
    let mut json = Vec::new();
    for group in &groups {
        let decision = index::select_uniform(&idx.bytes, group, &job)?;
        let chosen = decision.digest().map(str::to_string);
        all_ok &= chosen.is_ok();
        if args.json {
            json.push(serde_json::json!({
                "nodes": decision.nodes,
                "index": idx.digest,
                "chosen": chosen.as_ref().ok(),
                "entries": decision.entries,
                "capabilities": group,
            }));
            continue;
        }
        for n in group {
            print!("{}", n.render());
        }
        match &chosen {
            Ok(d) => {
                let e = decision.chosen_entry().expect("chosen");
                println!("chosen:     [{}] {} {d}", e.position, e.label());
            }
            Err(_) => println!("chosen:     none"),
        }
        print!("{}", decision.render());
        println!();
    }
    if args.json {
        let out = if json.len() == 1 {
            json.remove(0)
        } else {
            serde_json::Value::Array(json)
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if !all_ok {
        bail!("{spec}: no entry of the index fits (every entry's reason is listed above)");
    }
    Ok(ExitCode::SUCCESS)
}
