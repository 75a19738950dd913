//! The `palisade` command line.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use palisade_policy::{AllowLocalhost, Cluster, CompileOptions, CompiledPolicy, EnforcementMode, Parsed};

use crate::files;

mod bench;
mod check;
pub mod cluster;
mod completion;
mod controller;
mod diff;
mod local;
mod observe;
mod plan;
pub mod rollouts;
mod source;
mod trace;
mod version;

/// Exit code for usage errors and failures to run at all.
pub const EXIT_ERROR: u8 = 2;

/// An outcome a command reports as a failure (exit 1: a rollout that failed, a wait that timed
/// out), as opposed to a failure to run at all (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

/// The whole command line, as `palisade` or as the kubectl plugin `kubectl palisade`.
pub fn main(bin_name: &'static str) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(completion::COMPLETE) {
        // kubectl's plugin completion: every word after it is the command line being completed.
        let done = completion::complete(Cli::command(), &args[2..], &mut std::io::stdout().lock());
        return ExitCode::from(done.map_or(EXIT_ERROR, |code| code));
    }
    let matches = Cli::command().bin_name(bin_name).get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.bin_name = bin_name;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.is::<Failed>() { 1 } else { EXIT_ERROR })
        }
    }
}

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "GitOps rollout of network policy: audit a candidate on live traffic, promote it atomically"
)]
pub struct Cli {
    /// The kubeconfig file for commands that talk to the API server, instead of $KUBECONFIG or
    /// ~/.kube/config.
    #[arg(long, global = true, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
    /// How the command line was invoked: `palisade`, or `kubectl palisade` as the plugin.
    #[arg(skip = "palisade")]
    bin_name: &'static str,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate policy files and directories; print problems and lint warnings.
    Check(check::Args),
    /// Explain the verdict for one flow: egress of the source, ingress of the destination.
    Trace(trace::Args),
    /// Show every endpoint's identity, enforcement and compiled map entries.
    Plan(plan::Args),
    /// Show which flows a policy change would deny, allow or decide by another rule.
    Diff(diff::Args),
    /// Git sources: fetch, verify and read a repository the way the controller does.
    Source(source::Args),
    #[command(flatten)]
    Rollouts(rollouts::Command),
    /// The Kubernetes controller: `palisade controller run`.
    Controller(controller::Args),
    /// Local mode: a cluster file's pods as network namespaces on this machine (needs root).
    Local(local::Args),
    /// Stream the flows the datapath reports (drops, audits, candidate differences), Hubble-style.
    Observe(observe::Args),
    /// Print this client's version and the controller's (from its Deployment in the cluster).
    Version(version::Args),
    /// Print the shell completion script: `source <(palisade completion bash)`.
    Completion(completion::Args),
    /// Benchmarks (for `make bench-policy` and `make bench`).
    #[command(hide = true)]
    Bench(bench::Args),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Mode {
    #[default]
    Default,
    Always,
    Never,
}

impl From<Mode> for EnforcementMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Default => EnforcementMode::Default,
            Mode::Always => EnforcementMode::Always,
            Mode::Never => EnforcementMode::Never,
        }
    }
}

pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Source(args) => source::run(args),
        Command::Rollouts(command) => rollouts::run(command, cli.kubeconfig),
        Command::Controller(args) => controller::run(args, cli.kubeconfig),
        Command::Local(args) => local::run(args),
        Command::Observe(args) => observe::run(args, cli.kubeconfig.as_deref()),
        Command::Version(args) => version::run(args, cli.kubeconfig.as_deref(), &mut std::io::stdout().lock()),
        Command::Completion(args) => completion::run(args, Cli::command(), cli.bin_name, &mut std::io::stdout().lock()),
        Command::Bench(args) => bench::run(args),
    }
}

/// Policies that must be valid for a command to evaluate them: any error aborts with every
/// problem listed.
pub fn valid_policies(paths: &[PathBuf]) -> Result<Parsed> {
    let parsed = files::load_policies(paths)?;
    if parsed.has_errors() {
        let errors: Vec<_> = parsed.errors().cloned().collect();
        bail!("invalid policies:\n{}", files::join_diagnostics(&errors));
    }
    Ok(parsed)
}

/// What every command that evaluates one policy set against a cluster takes.
#[derive(clap::Args)]
pub struct EngineArgs {
    /// Cluster file: `kubectl get namespaces,pods,nodes,services,endpointslices -A -o yaml` output.
    #[arg(long)]
    cluster: PathBuf,
    /// Policy files or directories.
    #[arg(long, required = true, num_args = 1..)]
    policies: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    enforcement_mode: Mode,
    /// `always`: the local host reaches its pods whatever their policy (Cilium's default);
    /// `policy`: only as policy allows (`fromEntities: [host]`). As the agent is run with.
    #[arg(long, value_name = "MODE", default_value = "always", value_parser = allow_localhost_parser())]
    allow_localhost: AllowLocalhost,
    /// Explain this node's datapath: the node's addresses are `host` in its ipcache (without
    /// it, every node address is `remote-node`).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
}

impl EngineArgs {
    pub fn engine(&self) -> Result<CompiledPolicy> {
        let cluster: Cluster = files::load_cluster(&self.cluster)?;
        if let Some(node) = &self.node
            && cluster.node(node).is_none()
        {
            bail!("--node: {}: no Node {node:?}", self.cluster.display());
        }
        let parsed = valid_policies(&self.policies)?;
        let options = CompileOptions {
            mode: self.enforcement_mode.into(),
            host_node: self.node.clone(),
            allow_localhost: self.allow_localhost,
            ..CompileOptions::default()
        };
        Ok(CompiledPolicy::with_options(parsed.set, cluster, options))
    }
}

/// `--allow-localhost always|policy`, with the values listed in `--help`.
pub fn allow_localhost_parser() -> impl TypedValueParser<Value = AllowLocalhost> {
    clap::builder::PossibleValuesParser::new(AllowLocalhost::VALUES)
        .map(|value| value.parse::<AllowLocalhost>().expect("one of the possible values"))
}
