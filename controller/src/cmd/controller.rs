//! `palisade controller run`: the Kubernetes controller, in-cluster or from a kubeconfig.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use palisade_source::webhook::Provider;
use tracing_subscriber::EnvFilter;

use crate::reconciler::{self, AllowedSources, Config, Options, Webhook};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ControllerCommand,
}

#[derive(clap::Subcommand)]
enum ControllerCommand {
    /// Reconcile PolicyRollouts in every namespace (leader-elected), serve /metrics, /healthz,
    /// /readyz and the push webhook. Logs are JSON on stderr; RUST_LOG filters them.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The controller's namespace: the Lease, the agent Pods, and the only namespace whose
    /// rollouts may use `scope: Cluster` [default: $POD_NAMESPACE, else palisade-system].
    #[arg(long)]
    namespace: Option<String>,
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Serve the push webhook here (off when unset); needs --webhook-secret-file.
    #[arg(long, requires = "webhook_secret_file")]
    webhook_addr: Option<SocketAddr>,
    /// The webhook's URL path; make it hard to guess.
    #[arg(long, default_value = "/hook")]
    webhook_path: String,
    #[arg(long, value_enum, default_value_t = WebhookProvider::Github)]
    webhook_provider: WebhookProvider,
    /// File holding the HMAC secret (GitHub, generic) or token (GitLab).
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// Where Git mirrors are kept, one per rollout.
    #[arg(long, default_value = "/var/cache/palisade")]
    cache_dir: PathBuf,
    /// Label selector of the agent Pods in --namespace; their nodes hold the promotion barrier.
    #[arg(long, default_value = "app.kubernetes.io/name=palisade-agent")]
    agent_selector: String,
    /// Also fetch http:// and file:// sources, which neither authenticate the server nor protect
    /// the policies in transit; without it only https:// and ssh:// are fetched.
    #[arg(long)]
    allow_insecure_sources: bool,
    /// Name of the leader-election Lease in --namespace.
    #[arg(long, default_value = "palisade-controller")]
    lease_name: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum WebhookProvider {
    Github,
    Gitlab,
    Generic,
}

/// `--kubeconfig`: the controller's cluster when it runs outside it; in-cluster (or the
/// kubeconfig kube finds) when unset.
pub fn run(args: Args, kubeconfig: Option<PathBuf>) -> Result<u8> {
    match args.command {
        ControllerCommand::Run(args) => serve(args, kubeconfig),
    }
}

fn serve(args: RunArgs, kubeconfig: Option<PathBuf>) -> Result<u8> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let webhook = match (args.webhook_addr, &args.webhook_secret_file) {
        (Some(addr), Some(file)) => {
            let secret = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
            let secret = secret.trim_ascii_end().to_vec();
            let provider = match args.webhook_provider {
                WebhookProvider::Github => Provider::GitHub { secret },
                WebhookProvider::Gitlab => Provider::GitLab { token: secret },
                WebhookProvider::Generic => Provider::Generic { secret },
            };
            Some(Webhook { addr, path: args.webhook_path, provider })
        }
        _ => None,
    };
    let namespace =
        args.namespace.or_else(|| std::env::var("POD_NAMESPACE").ok()).unwrap_or_else(|| "palisade-system".into());
    // The Pod name is unique among replicas; the hostname is the same thing in a Pod.
    let identity = std::env::var("POD_NAME")
        .ok()
        .or_else(|| kube::runtime::events::Reporter::from("palisade").instance)
        .unwrap_or_else(|| format!("palisade-{}", std::process::id()));
    let allowed_sources = if args.allow_insecure_sources { AllowedSources::Any } else { AllowedSources::Secure };
    let options = Options {
        config: Config { namespace, agent_selector: args.agent_selector, cache_dir: args.cache_dir, allowed_sources },
        metrics_addr: args.metrics_addr,
        webhook,
        lease_name: args.lease_name,
        identity,
        kubeconfig,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(reconciler::run(options))?;
    Ok(0)
}
