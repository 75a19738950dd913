use std::path::PathBuf;

use anyhow::Result;
use palisade_policy::{CompiledPolicy, Severity, lint};

use super::{Mode, Output};
use crate::files;

#[derive(clap::Args)]
pub struct Args {
    /// Policy files or directories (searched recursively for *.yaml and *.yml).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Also lint against this cluster: selectors matching no pod, pods cut off from DNS,
    /// toServices naming no Service.
    #[arg(long)]
    cluster: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    enforcement_mode: Mode,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when clean (warnings allowed), 1 when any policy is invalid, 2 on usage errors.
pub fn run(args: Args) -> Result<u8> {
    let parsed = files::load_policies(&args.paths)?;
    let mut diagnostics = parsed.diagnostics.clone();
    if !parsed.has_errors()
        && let Some(path) = &args.cluster
    {
        let cluster = files::load_cluster(path)?;
        diagnostics.extend(lint::lint_with_cluster(&CompiledPolicy::new(
            parsed.set.clone(),
            cluster,
            args.enforcement_mode.into(),
        )));
    }
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diagnostics.len() - errors;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "policies": parsed.set.policies.len(),
                "errors": errors,
                "warnings": warnings,
                "diagnostics": diagnostics,
            }))?
        ),
        Output::Text => {
            for d in &diagnostics {
                println!("{d}");
            }
            let summary =
                format!("{} policies checked: {errors} error(s), {warnings} warning(s)", parsed.set.policies.len());
            if errors > 0 { eprintln!("{summary}") } else { println!("{summary}") }
        }
    }
    Ok(if errors > 0 { 1 } else { 0 })
}
