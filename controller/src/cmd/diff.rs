use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use palisade_policy::diff::{self, Change, Flow, FlowChange, FlowText};
use palisade_policy::model::PolicyId;
use palisade_policy::{CompiledPolicy, PolicySet};
use similar::TextDiff;

use super::{Mode, Output};
use crate::files;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    cluster: PathBuf,
    /// The policies enforced today.
    #[arg(long, required = true, num_args = 1..)]
    from_policies: Vec<PathBuf>,
    /// The candidate policies.
    #[arg(long, required = true, num_args = 1..)]
    to_policies: Vec<PathBuf>,
    /// Evaluate these flows (JSON lines: {"from": ..., "to": ..., "port": ...}) instead of every
    /// pod pair on every declared port. A flow to svc/NAMESPACE/NAME is one flow per backend.
    #[arg(long)]
    flows: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    enforcement_mode: Mode,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when connectivity is unchanged, 1 when it changes, 2 on errors (like `flux diff`).
pub fn run(args: Args) -> Result<u8> {
    let cluster = files::load_cluster(&args.cluster)?;
    let before = super::valid_policies(&args.from_policies)?.set;
    let after = super::valid_policies(&args.to_policies)?.set;
    let flows = match &args.flows {
        Some(path) => read_flows(path)?,
        None => diff::all_pod_flows(&cluster),
    };
    let text_diffs = policy_text_diffs(&before, &after);
    let old = CompiledPolicy::new(before, cluster.clone(), args.enforcement_mode.into());
    let new = CompiledPolicy::new(after, cluster, args.enforcement_mode.into());
    let changes = diff::semantic_diff(&old, &new, &flows).map_err(|e| anyhow!(e))?;
    let connectivity_changed = changes.iter().any(|c| c.change != Change::RuleChanged);
    match args.output {
        Output::Json => {
            let policies: Vec<_> = text_diffs
                .iter()
                .map(|(id, diff)| serde_json::json!({"policy": id.to_string(), "diff": diff}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"flows": changes, "policies": policies}))?);
        }
        Output::Text => print_text(&changes, flows.len(), &text_diffs),
    }
    Ok(u8::from(connectivity_changed))
}

fn read_flows(path: &PathBuf) -> Result<Vec<Flow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let flow: FlowText = serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            flow.parse().map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn print_text(changes: &[FlowChange], evaluated: usize, text_diffs: &[(PolicyId, String)]) {
    let count = |kind| changes.iter().filter(|c| c.change == kind).count();
    println!(
        "{evaluated} flows evaluated: {} newly denied, {} newly allowed, {} decided by another rule",
        count(Change::NewlyDenied),
        count(Change::NewlyAllowed),
        count(Change::RuleChanged)
    );
    for c in changes {
        let (mark, what) = match c.change {
            Change::NewlyDenied => ("-", "allowed -> DENIED"),
            Change::NewlyAllowed => ("+", "denied -> ALLOWED"),
            Change::RuleChanged => ("~", "same verdict, other rule"),
        };
        let via = match (&c.backend, c.backend_port) {
            (Some(backend), Some(port)) => format!(" via {backend}:{port}"),
            _ => String::new(),
        };
        println!("{mark} {} -> {} {}{via}: {what}", c.from, c.to, c.port);
        for (side, before, after) in [
            ("egress", &c.before.egress_rule, &c.after.egress_rule),
            ("ingress", &c.before.ingress_rule, &c.after.ingress_rule),
        ] {
            if before != after {
                println!("    {side}: {before}\n      now: {after}");
            }
        }
    }
    for (id, diff) in text_diffs {
        println!("\n--- {id}");
        print!("{diff}");
    }
}

/// Unified diffs of the policy objects that changed, were added or were removed.
fn policy_text_diffs(before: &PolicySet, after: &PolicySet) -> Vec<(PolicyId, String)> {
    let render = |set: &PolicySet| -> BTreeMap<PolicyId, String> {
        set.policies.iter().map(|p| (p.id.clone(), palisade_policy::yaml::to_yaml(&p.source))).collect()
    };
    let (old, new) = (render(before), render(after));
    let ids: std::collections::BTreeSet<&PolicyId> = old.keys().chain(new.keys()).collect();
    ids.into_iter()
        .filter_map(|id| {
            let (a, b) = (old.get(id).map_or("", String::as_str), new.get(id).map_or("", String::as_str));
            (a != b).then(|| {
                (
                    id.clone(),
                    TextDiff::from_lines(a, b)
                        .unified_diff()
                        .context_radius(3)
                        .header("enforced", "candidate")
                        .to_string(),
                )
            })
        })
        .collect()
}
