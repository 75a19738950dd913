//! `make bench-controller`: the control plane at 5,000 nodes. The real controller (its caches,
//! its Controller and reconciler, Git sources on file:// repositories) runs in a process of its
//! own, this example run again with `--controller URL`, so that its memory is measured alone; it
//! reaches the in-memory API server (`palisade-fake-apiserver`) over HTTP on loopback, through
//! `kube::Client` as it would reach the real one. 5,000 simulated agents write their
//! PolicyAuditReports through the agent's own report writer (`ReportWriter`: what is due, the
//! heartbeat, server-side apply), every `--report-interval` (10 s), from what a node would report:
//! the revisions it loaded and enforces, one endpoint per rollout with its traffic, no new
//! denies. One agent watch (the agent's own `watch`) keeps the rollouts every writer reads; the
//! cluster holds 5,000 Nodes, 5,000 agent Pods and 50,000 pods in 10 namespaces, one rollout per
//! namespace, each selecting a pod on every node.
//!
//! It lets the 10 rollouts settle (their first revision audited and promoted), measures a steady
//! window with no candidate anywhere, then pushes a commit to one rollout and measures its audit
//! from the candidate staged to the decision (Promoted). Reads and writes are every request the
//! API server received in the window (controller and agents), per second of wall time. The
//! settling audits use `minDuration: 60s` so that they take a minute; the measured audit uses
//! the default, 10m, as a user's would (an audit costs each node a fixed number of writes, printed
//! as `api_writes_per_node_audit`, whatever its length). Last, the baseline: the same steady
//! window again with agents that apply every report at every interval, changed or not, as they
//! did before #16 (`api_writes_per_s_steady_rewriting_all`). `postPromotionWindow` is 30s (default
//! 10m), and the steady window opens once the settling promotions' windows have closed. The
//! controller's memory is its process's peak resident set (VmHWM); reconcile p99 is
//! interpolated within its histogram bucket as Prometheus' `histogram_quantile` does. Prints
//! `name: value unit` lines on stdout; progress on stderr.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use palisade::reconciler::{AllowedSources, Caches, Config, Context, Metrics, OpenMetrics, control};
use palisade_agent::cluster_watch::{WatchState, watch};
use palisade_agent::report_name;
use palisade_agent::report_writer::ReportWriter;
use palisade_fake_apiserver::FakeApi;
use palisade_fake_apiserver::collections::{NODES, PODS, REPORTS, ROLLOUTS};
use palisade_rollout::crd::{
    AuditTotals, EndpointTraffic, Phase, PolicyAuditReport, PolicyAuditReportSpec, PolicyRollout,
};
use palisade_rollout::wire::{NODE_LABEL, RECONCILE_ANNOTATION, ROLLOUT_LABEL};
use serde_json::json;

const NODE_COUNT: usize = 5_000;
const ROLLOUT_COUNT: usize = 10;
const POD_COUNT: usize = 50_000;
const CONTROLLER_NS: &str = "palisade-system";
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=palisade-agent";
/// The agent's defaults.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(300);
/// Of the settling audits; the measured one uses the default.
const SETTLE_MIN_DURATION: Duration = Duration::from_secs(60);
const DEFAULT_MIN_DURATION: Duration = Duration::from_secs(600);
const STEADY_WINDOW: Duration = Duration::from_secs(60);
/// Short, so that the steady window starts once the promotions' watch windows have closed
/// (agents send drops every interval during one); the default is 10m.
const POST_PROMOTION_WINDOW: Duration = Duration::from_secs(30);
/// Reports in flight at once, as 5,000 agents would send them side by side.
const CONCURRENT_WRITES: usize = 64;

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, url, cache_dir] if flag == "--controller" => runtime.block_on(controller(url, cache_dir.into())),
        [] => runtime.block_on(bench()),
        _ => anyhow::bail!("usage: bench-controller (the controller runs as bench-controller --controller URL DIR)"),
    }
}

/// The controller process: the real controller against the API server at `url`, until its
/// stdin closes; its metrics on stdout (ending `# EOF`) for each `metrics` line on stdin.
async fn controller(url: &str, cache_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    let metrics = Arc::new(Metrics::default());
    let config = Config {
        namespace: CONTROLLER_NS.into(),
        agent_selector: AGENT_SELECTOR.into(),
        cache_dir,
        allowed_sources: AllowedSources::Any,
    };
    let (caches, triggers) = Caches::start(&client, &config);
    let ctx = Arc::new(Context::new(client, config, caches, metrics.clone(), Arc::new(Timestamp::now)));
    let (closed, halt) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if line == "metrics" {
                print!("{}", metrics.encode().unwrap_or_default());
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
        }
        let _ = closed.send(());
    });
    control(ctx, triggers, async move { drop(halt.await) }).await;
    Ok(())
}

/// The controller's process, as the benchmark sees it.
struct ControllerProcess {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ControllerProcess {
    fn start(url: &str, cache_dir: &Path) -> anyhow::Result<ControllerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--controller", url])
            .arg(cache_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = std::io::BufReader::new(child.stdout.take().expect("a piped stdout"));
        Ok(ControllerProcess { child, stdout })
    }

    /// Its metrics now, as it would serve them.
    fn metrics(&mut self) -> anyhow::Result<String> {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().expect("a piped stdin");
        stdin.write_all(b"metrics\n")?;
        stdin.flush()?;
        let mut text = String::new();
        while !text.ends_with("# EOF\n") {
            anyhow::ensure!(self.stdout.read_line(&mut text)? > 0, "the controller process stopped");
        }
        Ok(text)
    }

    /// Its peak resident memory so far, in MB.
    fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmHWM in the controller's status"))?;
        Ok(kb / 1024.0)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the controller process failed: {status}");
        Ok(())
    }
}

async fn bench() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let api = FakeApi::default();
    api.forget_bodies();
    eprintln!("populating: {NODE_COUNT} nodes and agents, {POD_COUNT} pods, {ROLLOUT_COUNT} rollouts");
    populate(&api, dir.path())?;
    // The controller's requests are served on threads of their own, as an API server's own
    // workers would serve them, not behind the simulated agents' tasks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = api.clone();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            listener.set_nonblocking(true)?;
            server.serve(tokio::net::TcpListener::from_std(listener)?).await
        })?;
        Ok(())
    });

    let state = Arc::new(WatchState::default());
    let (changes, received) = std::sync::mpsc::channel();
    tokio::spawn(watch(api.client(), changes, state.clone()));
    // The agent's changes go to its datapath; here nothing needs them.
    std::thread::spawn(move || received.into_iter().for_each(drop));
    while !state.synced() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut agents: Vec<Agent> = (0..NODE_COUNT)
        .map(|n| Agent {
            node: node_name(n),
            writer: ReportWriter::new(api.client(), state.clone(), node_name(n), HEARTBEAT),
            audits: HashMap::new(),
        })
        .collect();

    tick(&api, &mut agents).await;
    let mut controller = ControllerProcess::start(&url, &dir.path().join("cache"))?;

    eprintln!("settling: every rollout audits and promotes its first revision");
    let started = Instant::now();
    loop {
        tick(&api, &mut agents).await;
        let rollouts = rollouts(&api);
        if rollouts.iter().all(|r| phase(r) == Phase::Enforced) {
            break;
        }
        let (writes, reads) = requests(&api);
        eprintln!(
            "  {:.0} s: {} ({writes} writes, {reads} reads)",
            started.elapsed().as_secs_f64(),
            progress(&rollouts[0])
        );
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the rollouts did not settle: {:?}",
            phases(&rollouts)
        );
    }
    eprintln!("settled in {:.0} s", started.elapsed().as_secs_f64());

    let windows_closed = Instant::now() + POST_PROMOTION_WINDOW + REPORT_INTERVAL;
    while Instant::now() < windows_closed {
        tick(&api, &mut agents).await;
    }
    eprintln!("steady: {} s with no candidate anywhere", STEADY_WINDOW.as_secs());
    let steady = Window::open(&api);
    let before = controller.metrics()?;
    let steady_end = Instant::now() + STEADY_WINDOW;
    while Instant::now() < steady_end {
        tick(&api, &mut agents).await;
    }
    let (steady_writes, _) = steady.rates(&api);

    eprintln!("audit: a new commit for rollout ns-0/web, audited for the default minDuration, 10m");
    commit(&dir.path().join("repo-0"), "ns-0", 9090, "second revision")?;
    api.update(ROLLOUTS, "ns-0", "web", |rollout| {
        rollout["spec"]["audit"]["minDuration"] = json!(format!("{}s", DEFAULT_MIN_DURATION.as_secs()));
        rollout["metadata"]["annotations"] = json!({RECONCILE_ANNOTATION: Timestamp::now().to_string()});
    });
    let staged = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if rollout(&api, 0).status.and_then(|s| s.candidate_revision).is_some() {
            break Instant::now();
        }
    };
    let audit = Window::open(&api);
    // Watched for while the agents report, to time the decision to the poll, not to the tick.
    let (outcome, decided) = 'audit: loop {
        let mut reporting = std::pin::pin!(tick(&api, &mut agents));
        loop {
            tokio::select! {
                () = &mut reporting => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if let Some(phase) = decision(&rollout(&api, 0)) {
                break 'audit (phase, staged.elapsed());
            }
            anyhow::ensure!(
                staged.elapsed() < DEFAULT_MIN_DURATION + Duration::from_secs(300),
                "no decision: {}",
                progress(&rollout(&api, 0))
            );
        }
    };
    let (audit_writes, audit_reads) = audit.rates(&api);
    let per_node = audit_writes * decided.as_secs_f64() / NODE_COUNT as f64;
    anyhow::ensure!(outcome == Phase::Enforced, "the candidate was not promoted: {outcome:?}");
    let after = controller.metrics()?;
    let window = |name: &str| Durations::of(&after, name).since(&Durations::of(&before, name));
    let (reconciles, fetches) =
        (window("palisade_reconcile_duration_seconds"), window("palisade_source_fetch_duration_seconds"));
    let peak_rss = controller.peak_rss_mb()?;

    // The baseline: the same settled cluster with agents that apply every report at every
    // interval, changed or not, as they did before #16; a writer that remembers nothing writes
    // everything.
    eprintln!("steady again, {} s, with every agent rewriting every report every interval", STEADY_WINDOW.as_secs());
    let rewriting = Window::open(&api);
    let rewriting_end = Instant::now() + STEADY_WINDOW;
    while Instant::now() < rewriting_end {
        for agent in &mut agents {
            agent.writer = ReportWriter::new(api.client(), state.clone(), agent.node.clone(), HEARTBEAT);
        }
        tick(&api, &mut agents).await;
    }
    let (rewriting_writes, _) = rewriting.rates(&api);
    controller.stop()?;

    println!("api_writes_per_s_steady: {steady_writes:.2} /s");
    println!("api_writes_per_s_steady_rewriting_all: {rewriting_writes:.0} /s");
    println!("api_writes_per_s_audit: {audit_writes:.1} /s");
    println!("api_writes_per_node_audit: {per_node:.2} writes");
    println!("api_reads_per_s: {audit_reads:.1} /s");
    println!("reconcile_p99_ms: {:.1} ms", reconciles.quantile(0.99) * 1000.0);
    eprintln!(
        "{} reconciles from the steady window on, {:.1} ms each on average; {} of them fetched Git, {:.1} ms each on average",
        reconciles.count(),
        reconciles.mean() * 1000.0,
        fetches.count(),
        fetches.mean() * 1000.0
    );
    println!("controller_rss_mb: {peak_rss:.0} MB");
    println!("agent_report_bytes: {} bytes", report_bytes(&api));
    println!("time_to_decision_s: {:.1} s", decided.as_secs_f64());
    Ok(())
}

fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

/// Nodes, agent Pods, application pods, and a rollout per namespace on a repository of its own.
fn populate(api: &FakeApi, dir: &Path) -> anyhow::Result<()> {
    let ready = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    for n in 0..NODE_COUNT {
        let node = node_name(n);
        api.put(
            NODES,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "status": {"conditions": ready}}),
        );
        api.put(
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("palisade-agent-{n:04}"), "namespace": CONTROLLER_NS,
                         "labels": {"app.kubernetes.io/name": "palisade-agent"}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": ready}}),
        );
    }
    for p in 0..POD_COUNT {
        let (namespace, node) = (p % ROLLOUT_COUNT, (p / ROLLOUT_COUNT) % NODE_COUNT);
        api.put(
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{p:05}"), "namespace": format!("ns-{namespace}"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": node_name(node), "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": format!("10.200.{}.{}", p / 256, p % 256)}}),
        );
    }
    for r in 0..ROLLOUT_COUNT {
        let repo = dir.join(format!("repo-{r}"));
        git(&repo, &["init", "-q", "-b", "main", "."])?;
        commit(&repo, &format!("ns-{r}"), 8080, "first revision")?;
        api.put(
            ROLLOUTS,
            json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout",
            "metadata": {"name": "web", "namespace": format!("ns-{r}")},
            "spec": {"source": {"url": format!("file://{}", repo.display()), "ref": {"branch": "main"},
                                "path": "policies", "interval": "10m"},
                     "audit": {"minDuration": format!("{}s", SETTLE_MIN_DURATION.as_secs()), "minFlowsPerEndpoint": 1},
                     "rollback": {"postPromotionWindow": format!("{}s", POST_PROMOTION_WINDOW.as_secs())},
                     "promotion": "Auto"}}),
        );
    }
    Ok(())
}

/// Commits a policy letting the web pods of `namespace` reach each other on `port`.
fn commit(repo: &Path, namespace: &str, port: u16, message: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo.join("policies"))?;
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: {namespace}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: web}}}}]\n    toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]\n"
    );
    std::fs::write(repo.join("policies/web.yaml"), policy)?;
    git(repo, &["add", "-A"])?;
    git(repo, &["-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", message])
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo)?;
    let status = Command::new("git").arg("-C").arg(repo).args(args).status()?;
    anyhow::ensure!(status.success(), "git {args:?} failed");
    Ok(())
}

/// A simulated node agent: its report writer, and when it started auditing each candidate.
struct Agent {
    node: String,
    writer: ReportWriter,
    audits: HashMap<String, Timestamp>,
}

impl Agent {
    /// What the node reports for each rollout, as its agent would: the revisions the controller
    /// named are loaded (the enforced one in force, the candidate beside it) and its one pod of
    /// the rollout's namespace saw `flows` connections, none newly denied.
    fn batch(&mut self, rollouts: &[PolicyRollout], now: Timestamp, flows: u64) -> Vec<PolicyAuditReport> {
        rollouts
            .iter()
            .map(|rollout| {
                let namespace = rollout.metadata.namespace.clone().unwrap_or_default();
                let status = rollout.status.clone().unwrap_or_default();
                let enforced = status.enforced_revision.map(|r| r.id);
                let candidate = status.candidate_revision.map(|r| r.id).filter(|c| Some(c) != enforced.as_ref());
                // An agent loads a candidate as soon as its watch sees it staged, and says so at
                // its next report.
                let loaded_at = status.candidate_staged_at.as_ref().map_or(now, |t| t.0);
                let started = candidate.as_ref().map(|c| *self.audits.entry(c.clone()).or_insert(loaded_at));
                let name = report_name("web", &self.node);
                let labels = BTreeMap::from([
                    (ROLLOUT_LABEL.to_string(), "web".to_string()),
                    (NODE_LABEL.to_string(), self.node.clone()),
                ]);
                let spec = PolicyAuditReportSpec {
                    rollout: "web".into(),
                    node: self.node.clone(),
                    candidate_revision: candidate.clone(),
                    audit_started_at: started.map(Time),
                    audit_generation: status.audit_generation,
                    totals: AuditTotals { observed_flows: flows, ..AuditTotals::default() },
                    endpoints: vec![EndpointTraffic {
                        namespace: namespace.clone(),
                        pod: "web".into(),
                        workload: Some("web".into()),
                        flows,
                    }],
                    loaded_revisions: enforced.iter().chain(&candidate).cloned().collect(),
                    enforced_revision: enforced,
                    ..PolicyAuditReportSpec::default()
                };
                let mut report = PolicyAuditReport::new(&name, spec);
                report.metadata.namespace = Some(namespace);
                report.metadata.labels = Some(labels);
                report
            })
            .collect()
    }
}

/// One report interval: every agent hands its batch to its writer, each at its own moment of
/// the interval as agents started at different times would; returns once the interval is over
/// and every write done.
async fn tick(api: &FakeApi, agents: &mut [Agent]) {
    let start = tokio::time::Instant::now();
    let spacing = REPORT_INTERVAL / agents.len().max(1) as u32;
    // The rollouts as the agents' watches would have them: read again every 100 ms.
    let seen = std::sync::Mutex::new((Instant::now(), Arc::new(rollouts(api))));
    let current = || {
        let mut seen = seen.lock().expect("the rollouts seen");
        if seen.0.elapsed() > Duration::from_millis(100) {
            *seen = (Instant::now(), Arc::new(rollouts(api)));
        }
        seen.1.clone()
    };
    futures::stream::iter(agents.iter_mut().enumerate())
        .for_each_concurrent(CONCURRENT_WRITES, |(i, agent)| {
            let current = &current;
            async move {
                tokio::time::sleep_until(start + spacing * i as u32).await;
                let now = Timestamp::now();
                let batch = agent.batch(&current(), now, now.as_second().unsigned_abs());
                agent.writer.write(&batch, now).await
            }
        })
        .await;
    tokio::time::sleep_until(start + REPORT_INTERVAL).await;
}

fn rollouts(api: &FakeApi) -> Vec<PolicyRollout> {
    api.all(ROLLOUTS).into_iter().map(|r| serde_json::from_value(r).expect("a rollout")).collect()
}

fn rollout(api: &FakeApi, r: usize) -> PolicyRollout {
    serde_json::from_value(api.get(ROLLOUTS, &format!("ns-{r}"), "web").expect("the rollout")).expect("a rollout")
}

/// The audit's outcome once decided: the candidate promoted (gone, `Enforced`) or `Blocked`.
fn decision(rollout: &PolicyRollout) -> Option<Phase> {
    let status = rollout.status.as_ref()?;
    (status.candidate_revision.is_none() || status.phase == Phase::Blocked).then_some(status.phase)
}

fn phase(rollout: &PolicyRollout) -> Phase {
    rollout.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// A rollout's phase and the message of its Reconciling or Ready condition.
fn progress(rollout: &PolicyRollout) -> String {
    let status = rollout.status.clone().unwrap_or_default();
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True")
        .or_else(|| status.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    format!("{:?}: {message}", status.phase)
}

fn phases(rollouts: &[PolicyRollout]) -> Vec<Phase> {
    rollouts.iter().map(phase).collect()
}

/// The API requests of a stretch of wall time.
struct Window {
    start: Instant,
    writes: usize,
    reads: usize,
}

impl Window {
    fn open(api: &FakeApi) -> Window {
        let (writes, reads) = requests(api);
        Window { start: Instant::now(), writes, reads }
    }

    /// Writes and reads per second since the window opened.
    fn rates(&self, api: &FakeApi) -> (f64, f64) {
        let (writes, reads) = requests(api);
        let seconds = self.start.elapsed().as_secs_f64();
        ((writes - self.writes) as f64 / seconds, (reads - self.reads) as f64 / seconds)
    }
}

/// Writes (create, update, patch, delete) and reads (get, list, watch) so far.
fn requests(api: &FakeApi) -> (usize, usize) {
    let (reads, writes) = api.request_counts();
    (writes, reads)
}

/// One of the controller's duration histograms: cumulative counts per bucket bound (seconds).
struct Durations {
    buckets: Vec<(f64, f64)>,
    sum: f64,
}

impl Durations {
    /// The histogram `name` in OpenMetrics text.
    fn of(metrics: &str, name: &str) -> Durations {
        let bucket = format!("{name}_bucket{{le=\"");
        let total = format!("{name}_sum ");
        let buckets = metrics
            .lines()
            .filter_map(|line| line.strip_prefix(bucket.as_str()))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.parse().unwrap_or(f64::INFINITY), count.trim().parse().ok()?))
            })
            .collect();
        let sum = metrics.lines().find_map(|l| l.strip_prefix(total.as_str())?.trim().parse().ok()).unwrap_or(0.0);
        Durations { buckets, sum }
    }

    /// What was observed since `earlier`.
    fn since(&self, earlier: &Durations) -> Durations {
        let buckets = self.buckets.iter().zip(&earlier.buckets).map(|(now, then)| (now.0, now.1 - then.1)).collect();
        Durations { buckets, sum: self.sum - earlier.sum }
    }

    fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    fn mean(&self) -> f64 {
        self.sum / self.count().max(1.0)
    }

    /// The `q` quantile in seconds, interpolated linearly within its bucket as Prometheus'
    /// `histogram_quantile` does.
    fn quantile(&self, q: f64) -> f64 {
        let rank = self.count() * q;
        let Some(at) = self.buckets.iter().position(|(_, count)| *count >= rank) else { return 0.0 };
        let (upper, count) = self.buckets[at];
        let (lower, below) = at.checked_sub(1).map_or((0.0, 0.0), |i| self.buckets[i]);
        if upper.is_infinite() {
            return lower;
        }
        lower + (upper - lower) * (rank - below) / (count - below)
    }
}

/// The mean size of the reports the agents wrote, as JSON (their spec and metadata as applied).
fn report_bytes(api: &FakeApi) -> usize {
    let sizes: Vec<usize> = api
        .all(REPORTS)
        .iter()
        .map(|r| {
            json!({"metadata": {"name": r["metadata"]["name"], "labels": r["metadata"]["labels"]}, "spec": r["spec"]})
                .to_string()
                .len()
        })
        .collect();
    sizes.iter().sum::<usize>() / sizes.len().max(1)
}
