//! The injection plan and the decision table as text, for `shoal abi-check`
//! and `--dry-run`.

use std::fmt;

use super::plan::{EnvChange, InjectionPlan, LibraryDecision, Step};

impl fmt::Display for InjectionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            match step {
                Step::Tmpfs { target } => {
                    writeln!(f, "tmpfs  {} (mode 0755,nosuid,nodev)", target.display())?
                }
                Step::Bind(b) => {
                    let mut flags = vec![if b.read_only { "ro" } else { "rw" }];
                    if b.nosuid {
                        flags.push("nosuid");
                    }
                    if b.nodev {
                        flags.push("nodev");
                    }
                    let new = if b.target_in_image {
                        ""
                    } else {
                        ", new mount point"
                    };
                    writeln!(
                        f,
                        "bind   {} -> {} ({}{new})  # {}",
                        b.source.display(),
                        b.target.display(),
                        flags.join(","),
                        b.why
                    )?
                }
                Step::WriteFile { path, contents } => {
                    writeln!(f, "write  {} ({:?})", path.display(), contents)?
                }
                Step::RunInContainer { argv, why } => {
                    writeln!(f, "run    {}  # {why}", argv.join(" "))?
                }
                Step::BindWithin {
                    source,
                    target,
                    why,
                    ..
                } => writeln!(
                    f,
                    "bind   {} -> {} (ro,nosuid,nodev, inside the container)  # {why}",
                    source.display(),
                    target.display()
                )?,
            }
        }
        for change in &self.env {
            match change {
                EnvChange::Set { name, value } => writeln!(f, "env    {name}={value}")?,
                EnvChange::Prepend { name, entries } => {
                    writeln!(f, "env    {name}={}:${name}", entries.join(":"))?
                }
            }
        }
        Ok(())
    }
}

/// The decision table as aligned text columns.
pub fn render_table(decisions: &[LibraryDecision]) -> String {
    let header = [
        "LIBRARY",
        "MODULE",
        "HOST FILE",
        "HOST VER",
        "IMAGE FILE",
        "IMAGE VER",
        "DECISION",
        "REASON",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 8]> = decisions
        .iter()
        .map(|d| {
            let name = match &d.needed_by {
                Some(by) => format!("{} (for {by})", d.name),
                None => d.name.clone(),
            };
            let decision = if d.warning {
                format!("{} (warning)", d.action)
            } else {
                d.action.to_string()
            };
            [
                name,
                d.module.clone(),
                d.host
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(dash),
                d.host_version.clone().unwrap_or_else(dash),
                d.image
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(dash),
                d.image_version.clone().unwrap_or_else(dash),
                decision,
                d.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}
