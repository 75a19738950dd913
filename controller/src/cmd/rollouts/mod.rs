//! `palisade get|describe|promote|abort|reaudit|suspend|resume|reconcile`: PolicyRollouts (and
//! with `get` their PolicyRevisions and PolicyAuditReports) in a cluster, through the kubeconfig
//! like kubectl (and as `kubectl palisade ...`), or with `--local` in local mode's state directory
//! (`palisade local run`).
//!
//! Both backends share everything but the reads and the writes: the same rendering, and the same
//! decision of what a command changes. Promote, abort and reaudit create a PolicyDecision naming
//! the candidate and the user the API server says is asking (SelfSubjectReview); an admission
//! policy checks that name, and the right to decide is `create` on `policydecisions` (ClusterRole
//! `palisade-approver`), never a write to the rollout or its status. Suspend, resume and
//! reconcile merge-patch the rollout. In local mode both are left in the store, and the running
//! `palisade local run` picks them up on its next reconcile.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use palisade_rollout::crd::{PolicyAuditReport, PolicyRevision, PolicyRollout, PolicyRolloutStatus};

use super::cluster::ClusterArgs;

mod backend;
mod change;
mod columns;
mod describe;
mod get;
mod kinds;
mod labels;
mod wait;

pub use backend::{Backend, LOCAL_POLL, LocalState};
pub use columns::{PrinterColumn, json_path, printer_columns};
pub use describe::{EventRow, render_description};

/// The resource as kubectl names it.
const RESOURCE: &str = "policyrollouts.palisade.dev";
/// How kubectl names a changed rollout.
const RESOURCE_PREFIX: &str = "policyrollout.palisade.dev/";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List PolicyRollouts, PolicyRevisions or PolicyAuditReports: `get rollouts [NAME]`.
    Get {
        #[command(subcommand)]
        what: GetKind,
    },
    /// Show a PolicyRollout in detail, with its audit across nodes and its Events: `describe rollout NAME`.
    Describe {
        #[command(subcommand)]
        what: DescribeKind,
    },
    /// Approve the current candidate of a Manual rollout; it is promoted once its audit passes.
    Promote(NameArgs),
    /// Abandon the current candidate; the enforced revision stays and that commit is not staged again.
    Abort(NameArgs),
    /// Discard the current candidate's evidence and audit it again from now (clears Blocked).
    Reaudit(NameArgs),
    /// Stop acting on new commits and audit reports (sets spec.suspend).
    Suspend(NameArgs),
    /// Act on new commits again (clears spec.suspend).
    Resume(NameArgs),
    /// Ask the controller to sync the source now (annotates reconcile.palisade.dev/requestedAt);
    /// with --wait, wait until it has and the rollout is Ready, like `flux reconcile`.
    Reconcile(ReconcileArgs),
}

#[derive(Subcommand, Debug)]
pub enum GetKind {
    /// PolicyRollouts: what each enforces, audits and is waiting for.
    #[command(visible_aliases = ["rollout", "policyrollouts", "policyrollout", "pro"])]
    Rollouts(GetArgs),
    /// PolicyRevisions: the policy sets staged from Git commits.
    #[command(visible_aliases = ["revision", "policyrevisions", "policyrevision", "prev"])]
    Revisions(GetArgs),
    /// PolicyAuditReports: each node's audit of a rollout's candidate.
    #[command(visible_aliases = ["report", "policyauditreports", "policyauditreport", "par"])]
    Reports(GetArgs),
}

#[derive(Subcommand, Debug)]
pub enum DescribeKind {
    #[command(visible_aliases = ["rollouts", "policyrollout", "policyrollouts", "pro"])]
    Rollout(NameArgs),
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// One object by name; all of them when unset.
    name: Option<String>,
    #[command(flatten)]
    target: Target,
    /// List them in every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Only those whose labels match this selector, in kubectl's syntax: `-l
    /// palisade.dev/rollout=web`, `-l 'palisade.dev/node in (node-a,node-b)'`.
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "name")]
    selector: Option<String>,
    /// After listing, print a line for each change (an object with -o json|yaml) until
    /// interrupted (Ctrl-C).
    #[arg(short = 'w', long)]
    watch: bool,
    #[arg(short, long, value_enum)]
    output: Option<Format>,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// The PolicyRollout.
    name: String,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    rollout: NameArgs,
    /// Wait until the controller has synced and the rollout has settled: exit 0 once Ready (or
    /// waiting for an approval), 1 once it failed or is blocked, or at the timeout.
    #[arg(long)]
    wait: bool,
    /// With --wait: how long to wait, e.g. 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = palisade_rollout::parse_duration, requires = "wait")]
    timeout: std::time::Duration,
}

/// Where a command acts: a cluster (the kubeconfig's, as kubectl), or local mode's state directory.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Target {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Act on local mode (`palisade local run`) instead of a cluster. Without --namespace, a
    /// rollout is found in whichever namespace has it.
    #[arg(long, conflicts_with = "context")]
    pub local: bool,
    /// With --local: local mode's state directory [default: /run/palisade-local].
    #[arg(long, value_name = "DIR", requires = "local")]
    pub state: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    /// The table with more columns.
    Wide,
}

impl Command {
    fn target(&self) -> &Target {
        match self {
            Command::Get { what: GetKind::Rollouts(args) | GetKind::Revisions(args) | GetKind::Reports(args) } => {
                &args.target
            }
            Command::Describe { what: DescribeKind::Rollout(args) }
            | Command::Promote(args)
            | Command::Abort(args)
            | Command::Reaudit(args)
            | Command::Suspend(args)
            | Command::Resume(args)
            | Command::Reconcile(ReconcileArgs { rollout: args, .. }) => &args.target,
        }
    }
}

/// Runs `command` where its target says, with the global `--kubeconfig`.
pub fn run(command: Command, kubeconfig: Option<PathBuf>) -> Result<u8> {
    let mut target = command.target().clone();
    target.cluster.kubeconfig = kubeconfig;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let backend = Backend::connect(&target).await?;
        execute(&backend, command, &mut std::io::stdout().lock()).await
    })
}

/// Runs one command against `backend`, printing to `out`. The command's own target flags are
/// not looked at: `backend` is where it acts.
pub async fn execute(backend: &Backend, command: Command, out: &mut impl Write) -> Result<u8> {
    match command {
        Command::Get { what: GetKind::Rollouts(args) } => get::get::<PolicyRollout>(backend, &args, out).await?,
        Command::Get { what: GetKind::Revisions(args) } => get::get::<PolicyRevision>(backend, &args, out).await?,
        Command::Get { what: GetKind::Reports(args) } => get::get::<PolicyAuditReport>(backend, &args, out).await?,
        Command::Describe { what: DescribeKind::Rollout(args) } => describe::describe(backend, &args.name, out).await?,
        Command::Promote(args) => change::act(backend, &args.name, change::promotion, out).await?,
        Command::Abort(args) => change::act(backend, &args.name, change::abortion, out).await?,
        Command::Reaudit(args) => change::act(backend, &args.name, change::reaudit, out).await?,
        Command::Suspend(args) => change::act(backend, &args.name, |r, _| change::suspension(r, true), out).await?,
        Command::Resume(args) => change::act(backend, &args.name, |r, _| change::suspension(r, false), out).await?,
        Command::Reconcile(args) => return wait::reconcile(backend, &args, out).await,
    }
    Ok(0)
}

pub(super) fn condition<'a>(status: &'a PolicyRolloutStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

pub(super) fn source_ref(rollout: &PolicyRollout) -> String {
    let r = &rollout.spec.source.git_ref;
    let kinds = [("branch", &r.branch), ("tag", &r.tag), ("semver", &r.semver), ("commit", &r.commit)];
    kinds.iter().find_map(|(kind, v)| v.as_ref().map(|v| format!("{kind} {v}"))).unwrap_or_default()
}
