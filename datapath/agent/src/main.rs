//! `palisade-agent`: the node agent on a Kubernetes node (the DaemonSet in manifests/agent.yaml).
//!
//! Opens (or adopts) the pinned datapath, runs the agent on its thread, feeds it from the watches,
//! writes its PolicyAuditReports, and serves `/metrics`, `/healthz`, `/readyz` and the observed
//! flows as NDJSON on `/flows` (what `palisade observe --agent` reads), the flows only to a bearer
//! token whose user may read PolicyAuditReports (`palisade_agent::flow_access`). On SIGTERM it
//! stops without touching the datapath: the pinned programs and maps keep enforcing until the next
//! agent adopts them.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use palisade_agent::cluster_watch::{WatchState, watch};
use palisade_agent::flow_access::FlowAccess;
use palisade_agent::observe::{FlowHub, FlowVerdict, ObservedFlow, authorized_router};
use palisade_agent::report_writer::ReportWriter;
use palisade_agent::runtime::{ConvergeHook, Convergence, FlowHook, RuntimeOptions, spawn};
use palisade_agent::{Agent, AgentConfig, RouteResolver};
use palisade_datapath::{AttachMode, DEFAULT_PIN_DIR, Datapath};
use palisade_policy::AllowLocalhost;
use palisade_process::{OpenMetrics, Readiness, router, shutdown_signal};
use palisade_rollout::crd::PolicyAuditReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch as signal;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade's node agent: policy for this node's pods on the eBPF datapath"
)]
struct Args {
    /// Check that this node can run the agent (kernel with TCX, bpffs at the pin directory, pods
    /// on veths with no other datapath's tc programs), print one line per check, and exit
    /// non-zero if any fails (the DaemonSet's init container).
    #[arg(long)]
    preflight: bool,
    /// This node: its pods are the endpoints the agent programs.
    #[arg(long, env = "NODE_NAME", required_unless_present = "preflight")]
    node_name: Option<String>,
    /// Where the datapath's programs and maps are pinned (bpffs).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// How programs hook into pods' interfaces: `tcx` (kernel >= 6.6), `tc` (legacy tc filters,
    /// kernels 5.10 to 6.5) or `auto`: the pinned datapath's mode, else what the kernel has.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = AttachFlag::Auto)]
    attach_mode: AttachFlag,
    /// `/metrics`, `/healthz`, `/readyz` (open) and `/flows` (to authorized bearer tokens).
    #[arg(long, default_value = "0.0.0.0:9964")]
    metrics_addr: SocketAddr,
    /// The node's L7 proxy listens on this port of 127.0.0.1, TCP and UDP (0: any free port);
    /// the datapath steers connections and DNS queries whose policy has L7 rules to it.
    #[arg(long, default_value_t = 0)]
    l7_proxy_port: u16,
    /// Addresses learned from DNS answers for `toFQDNs` are kept at least this long, whatever
    /// the answer's TTL (Cilium's `tofqdns-min-ttl`).
    #[arg(long, default_value = "1h", value_parser = palisade_rollout::parse_duration)]
    fqdn_min_ttl: Duration,
    /// Those addresses are saved here and restored when the agent starts again, so that a
    /// restart does not close pods' connections to them (a host directory).
    #[arg(long, value_name = "FILE", default_value = "/var/run/palisade/fqdn.json")]
    fqdn_state: PathBuf,
    /// PolicyAuditReports are built this often (`10s`, `500ms`, `1m`) and written when what the
    /// controller's gates read changed, or the rollout's drops are watched after a promotion.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    report_interval: Duration,
    /// An unchanged report is rewritten this often, with its counters: the controller takes a
    /// node whose reports are older than two heartbeats for gone.
    #[arg(long, default_value = "5m", value_parser = parse_interval)]
    report_heartbeat: Duration,
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// `always`: the node itself reaches its pods whatever their policy (kubelet probes;
    /// Cilium's default); `policy`: only as policy allows (`fromEntities: [host]`).
    #[arg(long, value_name = "MODE", default_value = "always", value_parser = allow_localhost_parser())]
    allow_localhost: AllowLocalhost,
}

fn allow_localhost_parser() -> impl TypedValueParser<Value = AllowLocalhost> {
    PossibleValuesParser::new(AllowLocalhost::VALUES)
        .map(|value| value.parse::<AllowLocalhost>().expect("one of the possible values"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AttachFlag {
    Auto,
    Tcx,
    Tc,
}

impl AttachFlag {
    /// The mode asked for; `auto` leaves the choice to the datapath.
    fn mode(self) -> Option<AttachMode> {
        match self {
            AttachFlag::Auto => None,
            AttachFlag::Tcx => Some(AttachMode::Tcx),
            AttachFlag::Tc => Some(AttachMode::Tc),
        }
    }
}

/// `--report-interval` and `--report-heartbeat`: a positive duration in the CRDs' grammar.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration = palisade_rollout::parse_duration(text)?;
    if duration.is_zero() {
        return Err("the interval must be positive".into());
    }
    Ok(duration)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.preflight {
        let checks = palisade_agent::preflight::run(&args.pin_dir);
        for check in &checks {
            println!("{check}");
        }
        std::process::exit(if palisade_agent::preflight::passed(&checks) { 0 } else { 1 });
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node_name = args.node_name.clone().context("--node-name (or NODE_NAME) is required")?;
    let metrics = Arc::new(Metrics::default());
    // Ready once the watches have synced and the datapath was brought in line with them.
    let ready = Arc::new(Readiness::default());
    let flows = FlowHub::default();
    let (stop_tx, stop) = signal::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("{}: cannot listen", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "listening");
    let client = kube::Client::try_default().await.context("no Kubernetes API to talk to")?;
    let server = tokio::spawn({
        let mut stop = stop.clone();
        let access = Arc::new(FlowAccess::new(client.clone()));
        let router = router(metrics.clone(), ready.clone()).merge(authorized_router(flows.clone(), access));
        async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
                error!(error = %e, "metrics server stopped");
            }
        }
    });

    let datapath = Datapath::open_with(&args.pin_dir, args.attach_mode.mode())
        .with_context(|| format!("{}: cannot open or load the datapath", args.pin_dir.display()))?;
    let config = AgentConfig {
        node: Some(node_name.clone()),
        allow_localhost: args.allow_localhost,
        health_port: Some(args.metrics_addr.port()),
        ..AgentConfig::default()
    };
    let attach_mode = datapath.attach_mode();
    let agent = Agent::new(config, datapath, RouteResolver);
    let hook = {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        ConvergeHook(Arc::new(move |c: &Convergence| {
            metrics.converged(c);
            if c.ok {
                ready.set(true);
            }
        }))
    };
    let on_flow = {
        let metrics = metrics.clone();
        FlowHook(Arc::new(move |flow: &ObservedFlow| metrics.observed(flow)))
    };
    let options = RuntimeOptions {
        report_interval: args.report_interval,
        on_converge: Some(hook),
        on_flow: Some(on_flow),
        flows,
        proxy_port: Some(args.l7_proxy_port),
        fqdn_min_ttl: args.fqdn_min_ttl,
        fqdn_state: Some(args.fqdn_state.clone()),
        ..RuntimeOptions::default()
    };
    let handle = spawn(agent, options).context("cannot start the agent's thread")?;
    info!(
        node = %node_name,
        pin_dir = %args.pin_dir.display(),
        attach_mode = %attach_mode,
        allow_localhost = %args.allow_localhost,
        "agent started"
    );

    let state = Arc::new(WatchState::default());
    let mut watches = tokio::spawn(watch(client.clone(), handle.changes, state.clone()));
    let writer = ReportWriter::new(client, state, node_name, args.report_heartbeat);
    let writer = tokio::spawn(write_reports(writer, handle.reports, metrics));
    tokio::select! {
        _ = shutdown_signal() => info!("shutting down; the pinned datapath keeps enforcing"),
        _ = &mut watches => warn!("the agent stopped"),
    }
    // Dropping the watches drops the agent's inbox sender: its thread finishes what it is doing
    // and stops, which ends the report stream and the writer.
    watches.abort();
    let _ = watches.await;
    let result = tokio::task::spawn_blocking(move || handle.thread.join()).await?;
    if tokio::time::timeout(Duration::from_secs(5), writer).await.is_err() {
        warn!("the last reports were not written in time");
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("the agent failed"),
        Err(_) => anyhow::bail!("the agent's thread panicked"),
    }
}

/// Writes every batch of reports, only the newest when several queued up.
async fn write_reports(
    mut writer: ReportWriter,
    mut reports: UnboundedReceiver<Vec<PolicyAuditReport>>,
    metrics: Arc<Metrics>,
) {
    while let Some(mut batch) = reports.recv().await {
        while let Ok(newer) = reports.try_recv() {
            batch = newer;
        }
        metrics.reported(&batch);
        writer.write(&batch, Timestamp::now()).await;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    namespace: String,
    rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    namespace: String,
    rollout: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiffLabels {
    namespace: String,
    rollout: String,
    candidate_verdict: String,
}

struct Metrics {
    registry: Registry,
    flows_processed: Family<FlowLabels, Counter>,
    policy_diffs: Family<DiffLabels, Counter>,
    endpoints: Gauge,
    converge_seconds: Histogram,
    converge_errors: Counter,
    audit_new_denies: Family<RolloutLabels, Gauge>,
    drops_per_minute: Family<RolloutLabels, Gauge>,
    /// Rollouts of the last batch, so that gone ones lose their series.
    rollouts: std::sync::Mutex<BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("palisade_agent");
        let reg = &mut registry;
        Metrics {
            endpoints: registered(reg, "endpoints", "Local endpoints (pods on this node) the agent programs"),
            converge_seconds: registered_as(
                reg,
                "converge_seconds",
                "Time to bring the datapath in line with a batch of changes",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            converge_errors: registered(reg, "converge_errors", "Convergences that failed and were retried"),
            audit_new_denies: registered(
                reg,
                "audit_new_denies",
                "Flows this node saw that the rollout's candidate would newly deny",
            ),
            drops_per_minute: registered(
                reg,
                "drops_per_minute",
                "Packets this node dropped per minute because of the rollout's enforced revision (its rules, or \
                 default deny of the endpoints it selects), over the last minute",
            ),
            flows_processed: registered(
                reg,
                "flows_processed",
                "New flows the datapath reported (dropped, audited, or judged differently by a candidate), by the \
                 rollout whose rule decided and the enforced verdict (FORWARDED, DROPPED, AUDIT)",
            ),
            policy_diffs: registered(
                reg,
                "policy_diffs",
                "New flows the rollout's candidate judges differently from the enforced revision, by what the \
                 candidate would do",
            ),
            rollouts: Default::default(),
            registry,
        }
    }
}

/// A new metric, registered under `name`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    registered_as(registry, name, help, M::default())
}

/// `metric`, registered under `name`.
fn registered_as<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    fn converged(&self, convergence: &Convergence) {
        self.converge_seconds.observe(convergence.duration.as_secs_f64());
        if !convergence.ok {
            self.converge_errors.inc();
        }
        self.endpoints.set(i64::try_from(convergence.endpoints).unwrap_or(i64::MAX));
    }

    fn observed(&self, flow: &ObservedFlow) {
        let (namespace, rollout) =
            flow.rollout.as_ref().map(|r| (r.namespace.clone(), r.name.clone())).unwrap_or_default();
        let labels = FlowLabels { namespace, rollout, verdict: flow.verdict.as_str().into() };
        self.flows_processed.get_or_create(&labels).inc();
        if let Some(candidate) = flow.candidate.as_ref().filter(|c| c.differs) {
            let verdict = match candidate.verdict {
                FlowVerdict::Dropped => "DROPPED",
                _ => "FORWARDED",
            };
            let labels =
                DiffLabels { namespace: labels.namespace, rollout: labels.rollout, candidate_verdict: verdict.into() };
            self.policy_diffs.get_or_create(&labels).inc();
        }
    }

    fn reported(&self, batch: &[PolicyAuditReport]) {
        let mut rollouts = self.rollouts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut now = BTreeSet::new();
        for report in batch {
            let labels = RolloutLabels {
                namespace: report.metadata.namespace.clone().unwrap_or_default(),
                rollout: report.spec.rollout.clone(),
            };
            let new_denies = i64::try_from(report.spec.totals.new_denies).unwrap_or(i64::MAX);
            self.audit_new_denies.get_or_create(&labels).set(new_denies);
            let drops_per_minute = i64::try_from(report.spec.totals.drops_per_minute).unwrap_or(i64::MAX);
            self.drops_per_minute.get_or_create(&labels).set(drops_per_minute);
            now.insert((labels.namespace, labels.rollout));
        }
        for (namespace, rollout) in rollouts.difference(&now) {
            let labels = RolloutLabels { namespace: namespace.clone(), rollout: rollout.clone() };
            self.audit_new_denies.remove(&labels);
            self.drops_per_minute.remove(&labels);
        }
        *rollouts = now;
    }
}

impl OpenMetrics for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use palisade_rollout::crd::{AuditTotals, PolicyAuditReportSpec};

    use super::*;

    #[test]
    fn the_report_interval_is_a_positive_duration_in_the_crds_grammar() {
        assert_eq!(parse_interval("1m30s"), palisade_rollout::parse_duration("1m30s"));
        assert!(parse_interval("0s").is_err(), "positive");
        assert!(parse_interval("10").is_err(), "with a unit, as in a CRD");
    }

    #[test]
    fn flags_have_defaults_but_the_node() {
        assert!(Args::try_parse_from(["palisade-agent"]).is_err() || std::env::var("NODE_NAME").is_ok());
        let args = Args::try_parse_from(["palisade-agent", "--node-name", "n1"]).unwrap();
        assert_eq!(args.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(args.metrics_addr, "0.0.0.0:9964".parse().unwrap());
        assert_eq!(args.report_interval, Duration::from_secs(10));
        assert_eq!(args.report_heartbeat, Duration::from_secs(300));
        assert_eq!(args.fqdn_min_ttl, Duration::from_secs(3600));
        assert_eq!(args.allow_localhost, AllowLocalhost::Always, "Cilium's default");
        let args =
            Args::try_parse_from(["palisade-agent", "--node-name", "n1", "--allow-localhost", "policy"]).unwrap();
        assert_eq!(args.allow_localhost, AllowLocalhost::Policy);
        let bogus = Args::try_parse_from(["palisade-agent", "--node-name", "n1", "--allow-localhost", "never"]);
        assert!(bogus.unwrap_err().to_string().contains("[possible values: always, policy]"));
    }

    #[test]
    fn the_attach_mode_is_chosen_by_default_or_named() {
        let mode = |flag: &str| Args::try_parse_from(["palisade-agent", "--node-name", "n1", "--attach-mode", flag]);
        assert_eq!(Args::try_parse_from(["palisade-agent", "--node-name", "n1"]).unwrap().attach_mode.mode(), None);
        assert_eq!(mode("auto").unwrap().attach_mode.mode(), None);
        assert_eq!(mode("tc").unwrap().attach_mode.mode(), Some(AttachMode::Tc));
        assert_eq!(mode("tcx").unwrap().attach_mode.mode(), Some(AttachMode::Tcx));
        assert!(mode("xdp").unwrap_err().to_string().contains("[possible values: auto, tcx, tc]"));
    }

    /// The metrics' text, which must hold every one of `lines`.
    pub(super) fn assert_lines(metrics: &Metrics, lines: &[&str]) -> String {
        let text = metrics.encode().unwrap();
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "{line} missing in\n{text}");
        }
        text
    }

    fn report(rollout: &str, new_denies: u64, drops_per_minute: u64) -> PolicyAuditReport {
        let spec = PolicyAuditReportSpec {
            rollout: rollout.into(),
            node: "n1".into(),
            totals: AuditTotals { new_denies, drops_per_minute, ..AuditTotals::default() },
            ..PolicyAuditReportSpec::default()
        };
        let mut report = PolicyAuditReport::new(&format!("{rollout}-n1"), spec);
        report.metadata.namespace = Some("shop".into());
        report
    }

    #[test]
    fn metrics_follow_convergences_and_reports() {
        let metrics = Metrics::default();
        metrics.converged(&Convergence { duration: Duration::from_millis(3), ok: true, endpoints: 4 });
        metrics.converged(&Convergence { duration: Duration::from_millis(1), ok: false, endpoints: 4 });
        metrics.reported(&[report("web", 2, 30), report("db", 0, 30)]);
        metrics.reported(&[report("web", 5, 12)]);
        let text = assert_lines(
            &metrics,
            &[
                "palisade_agent_endpoints 4",
                "palisade_agent_converge_seconds_count 2",
                "palisade_agent_converge_errors_total 1",
                "palisade_agent_audit_new_denies{namespace=\"shop\",rollout=\"web\"} 5",
                "palisade_agent_drops_per_minute{namespace=\"shop\",rollout=\"web\"} 12",
            ],
        );
        assert!(!text.contains("rollout=\"db\""), "a gone rollout loses its series:\n{text}");
    }
}

#[cfg(test)]
mod flow_metrics {
    use palisade_agent::observe::{CandidateVerdict, DecidedBy, FlowPeer, RolloutRef};

    use super::tests::assert_lines;
    use super::*;

    fn flow(verdict: FlowVerdict, candidate: Option<FlowVerdict>) -> ObservedFlow {
        ObservedFlow {
            time: "2025-11-21T13:38:33Z".into(),
            node: "n1".into(),
            verdict,
            drop_reason: None,
            direction: "ingress".into(),
            source: FlowPeer::default(),
            destination: FlowPeer::default(),
            service: None,
            port: 5432,
            protocol: "TCP".into(),
            decided_by: DecidedBy::default(),
            candidate: candidate.map(|c| CandidateVerdict {
                verdict: c,
                drop_reason: None,
                differs: c != verdict,
                decided_by: DecidedBy::default(),
            }),
            rollout: Some(RolloutRef { namespace: "shop".into(), name: "db".into() }),
            enforced_revision: None,
            candidate_revision: None,
            endpoint: 1,
            l7: None,
        }
    }

    #[test]
    fn flows_are_counted_per_rollout_and_verdict() {
        let metrics = Metrics::default();
        metrics.observed(&flow(FlowVerdict::Dropped, None));
        metrics.observed(&flow(FlowVerdict::Dropped, Some(FlowVerdict::Dropped)));
        metrics.observed(&flow(FlowVerdict::Forwarded, Some(FlowVerdict::Dropped)));
        metrics.observed(&flow(FlowVerdict::Audit, None));
        assert_lines(
            &metrics,
            &[
                "palisade_agent_flows_processed_total{namespace=\"shop\",rollout=\"db\",verdict=\"DROPPED\"} 2",
                "palisade_agent_flows_processed_total{namespace=\"shop\",rollout=\"db\",verdict=\"FORWARDED\"} 1",
                "palisade_agent_flows_processed_total{namespace=\"shop\",rollout=\"db\",verdict=\"AUDIT\"} 1",
                "palisade_agent_policy_diffs_total{namespace=\"shop\",rollout=\"db\",candidate_verdict=\"DROPPED\"} 1",
            ],
        );
    }
}
