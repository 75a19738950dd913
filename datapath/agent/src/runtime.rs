//! Runs an agent on its own thread: changes in, PolicyAuditReports out. Kubernetes watches and
//! local mode feed the same loop.
//!
//! A thread, not a task: converging is CPU work (a new revision compiles for a second on a big
//! cluster) and, in local mode, the thread lives in the node's network namespace, where the
//! endpoints' interfaces are.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use palisade_rollout::crd::PolicyAuditReport;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::agent::{Agent, Error};
use crate::dataplane::{Dataplane, FlowEvents, InterfaceResolver};
use crate::fqdn::FqdnCache;
use crate::input::Change;
use crate::observe::{FlowHub, ObservedFlow};
use crate::proxy::{FlowSink, Learner, Proxy, ProxyContext, SharedPolicy, Written, install_routing};

/// Longest the agent's thread waits before draining the flow events again.
const EVENT_WAIT: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Reports are published at least this often.
    pub report_interval: Duration,
    /// And at most this often, also when revisions load or flip (which the controller waits for).
    pub min_report_gap: Duration,
    /// Retry after a failed convergence.
    pub retry: Duration,
    /// Run in this network namespace (`/run/netns/NAME`): local mode's node namespace.
    pub netns: Option<PathBuf>,
    /// Told about every convergence once synced (metrics, readiness).
    pub on_converge: Option<ConvergeHook>,
    /// Told about every observed flow, on the agent's thread (metrics).
    pub on_flow: Option<FlowHook>,
    /// Where observed flows are published ([`AgentHandle::flows`]); closed when the agent stops.
    pub flows: FlowHub,
    /// Run the L7 proxy on this port of 127.0.0.1 (0: any free one), with its policy routing
    /// in the agent's namespace. `None` (the default, so that nothing touches the routing of a
    /// namespace nobody asked for): no proxy, and connections whose policy has L7 rules are
    /// dropped (`l7-unsupported`).
    pub proxy_port: Option<u16>,
    /// Addresses the DNS proxy learns are kept at least this long (Cilium's `tofqdns-min-ttl`).
    pub fqdn_min_ttl: Duration,
    /// Where they are saved after each change and restored from at start, so that a restart
    /// does not close connections to them. `None`: kept in memory only.
    pub fqdn_state: Option<PathBuf>,
}

/// Cilium's default `tofqdns-min-ttl`: an hour.
pub const DEFAULT_FQDN_MIN_TTL: Duration = Duration::from_secs(3600);

/// What the agent's thread takes in.
enum Input {
    Change(Change),
    /// The DNS proxy learned addresses: the FQDN cache has a new generation to write.
    Learned,
    /// Every sender of changes is gone: the agent stops.
    Stopped,
}

/// One convergence after [`Change::Synced`].
#[derive(Clone, Debug)]
pub struct Convergence {
    pub duration: Duration,
    pub ok: bool,
    /// Local endpoints after it.
    pub endpoints: usize,
}

#[derive(Clone)]
pub struct ConvergeHook(pub Arc<dyn Fn(&Convergence) + Send + Sync>);

#[derive(Clone)]
pub struct FlowHook(pub Arc<dyn Fn(&ObservedFlow) + Send + Sync>);

impl std::fmt::Debug for FlowHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowHook")
    }
}

impl std::fmt::Debug for ConvergeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConvergeHook")
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            report_interval: Duration::from_secs(10),
            min_report_gap: Duration::from_millis(250),
            retry: Duration::from_secs(1),
            netns: None,
            on_converge: None,
            on_flow: None,
            flows: FlowHub::default(),
            proxy_port: None,
            fqdn_min_ttl: DEFAULT_FQDN_MIN_TTL,
            fqdn_state: None,
        }
    }
}

/// A running agent: send it changes; drop the sender to stop it.
pub struct AgentHandle {
    pub changes: mpsc::Sender<Change>,
    pub reports: UnboundedReceiver<Vec<PolicyAuditReport>>,
    pub thread: JoinHandle<Result<(), Error>>,
    /// The flows the datapath reports, as observers see them; ends when the agent stops.
    pub flows: FlowHub,
}

pub fn spawn<D, R>(agent: Agent<D, R>, options: RuntimeOptions) -> std::io::Result<AgentHandle>
where
    D: Dataplane + Send + 'static,
    R: InterfaceResolver + Send + 'static,
{
    let (changes, received) = mpsc::channel();
    // The DNS proxy feeds the thread too, so the senders' end is passed on as `Stopped`.
    let (input, inbox) = mpsc::channel();
    let forwarded = input.clone();
    thread::Builder::new().name("palisade-changes".into()).spawn(move || {
        for change in received {
            if forwarded.send(Input::Change(change)).is_err() {
                return;
            }
        }
        let _ = forwarded.send(Input::Stopped);
    })?;
    let (outbox, reports) = unbounded_channel();
    let netns = options.netns.as_ref().map(File::open).transpose()?;
    let flows = options.flows.clone();
    let hub = flows.clone();
    let thread = thread::Builder::new().name("palisade-agent".into()).spawn(move || {
        let entered = netns.as_ref().map_or(Ok(()), enter_netns);
        if entered.is_ok() {
            run(agent, (inbox, input), outbox, &hub, &options);
        }
        hub.close();
        entered
    })?;
    Ok(AgentHandle { changes, reports, thread, flows })
}

fn enter_netns(netns: &File) -> Result<(), Error> {
    // SAFETY: a valid namespace file descriptor; only this thread moves.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::Netns(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn run<D: Dataplane, R: InterfaceResolver>(
    mut agent: Agent<D, R>,
    (inbox, input): (mpsc::Receiver<Input>, mpsc::Sender<Input>),
    outbox: UnboundedSender<Vec<PolicyAuditReport>>,
    hub: &FlowHub,
    options: &RuntimeOptions,
) {
    let mut next_report = Instant::now() + options.report_interval;
    let mut last_report: Option<Instant> = None;
    let mut events = agent.dataplane().events().map_err(|e| warn!("no flow events to observe: {e}")).ok();
    let policy = SharedPolicy::default();
    let fqdns = Arc::new(Mutex::new(restored_fqdns(options)));
    agent.set_dns_answers(lock(&fqdns).answers());
    // The newest generation of the FQDN cache written to the datapath: answers wait for theirs.
    let (written, written_watch) = watch::channel(0);
    // Started here: in local mode this thread is in the node's namespace, where the proxy's
    // sockets and routes must be.
    let _proxy = options.proxy_port.and_then(|port| {
        let context = ProxyContext {
            policy: policy.clone(),
            diffs: agent.l7_diffs().clone(),
            learner: learner(fqdns.clone(), input, written_watch),
            flows: FlowSink { hub: hub.clone(), node: agent.node_name() },
        };
        start_proxy(&mut agent, port, context)
    });
    // Set when the proxy learned something since the last convergence.
    let mut learned = false;
    let mut failed = false;
    let mut retry_at = Instant::now();
    let mut synced = false;
    // Set by changes the controller waits on (revisions loading, flips).
    let mut barrier_moved = false;
    loop {
        let mut due = next_report;
        if barrier_moved {
            due = due.min(last_report.map_or(Instant::now(), |at| at + options.min_report_gap));
        }
        let expiry = lock(&fqdns).next_expiry();
        let due = expiry.map_or(due, |expiry| due.min(expiry));
        let wait = if failed { retry_at } else { due }.saturating_duration_since(Instant::now());
        let wait = if events.is_some() { wait.min(EVENT_WAIT) } else { wait };
        let received = inbox.recv_timeout(wait);
        // Before the changes: an event is read against the policy it was decided by.
        if let Some(events) = &mut events {
            observe(&agent, events.as_mut(), hub, options);
        }
        let mut changed = match received {
            Ok(Input::Stopped) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(input) => {
                take(&mut agent, input, (&mut barrier_moved, &mut synced), &mut learned);
                true
            }
            Err(RecvTimeoutError::Timeout) => failed && Instant::now() >= retry_at,
        };
        let mut stopped = false;
        while let Ok(input) = inbox.try_recv() {
            stopped |= matches!(input, Input::Stopped);
            take(&mut agent, input, (&mut barrier_moved, &mut synced), &mut learned);
            changed = true;
        }
        if stopped {
            break;
        }
        let expired = expiry.is_some_and(|at| at <= Instant::now()) && lock(&fqdns).expire(Instant::now());
        // Only learning and expiry change the answers: copied out for the agent then, not on
        // every other change.
        let mut writing = None;
        if expired || learned {
            let (answers, generation) = {
                let fqdns = lock(&fqdns);
                (fqdns.answers(), fqdns.generation())
            };
            agent.set_dns_answers(answers);
            writing = Some(generation);
            learned = false;
            changed = true;
        }
        if changed {
            let started = Instant::now();
            let result = agent.converge();
            if let (true, Some(hook)) = (synced, &options.on_converge) {
                let ok = result.is_ok();
                (hook.0)(&Convergence { duration: started.elapsed(), ok, endpoints: agent.endpoints().len() });
            }
            if let Some(update) = agent.proxy_policy_update() {
                policy.publish(update);
            }
            // Written or not, the answers go: a failed write leaves their addresses unknown,
            // and a connection to an unknown address is dropped, never passed.
            if let Some(generation) = writing {
                written.send_replace(generation);
            }
            if let Some(path) = options.fqdn_state.as_deref().filter(|_| writing.is_some())
                && let Err(e) = lock(&fqdns).save(path, Instant::now())
            {
                warn!(path = %path.display(), "could not save the addresses learned for toFQDNs: {e}");
            }
            failed = match result {
                Ok(()) => false,
                Err(e) => {
                    warn!("could not bring the datapath in line; retrying: {e}");
                    retry_at = Instant::now() + options.retry;
                    true
                }
            };
        }
        let now = Instant::now();
        let gap_passed = last_report.is_none_or(|at| now.duration_since(at) >= options.min_report_gap);
        if now >= next_report || (barrier_moved && gap_passed && !failed) {
            match agent.reports(Timestamp::now()) {
                Ok(reports) => {
                    if outbox.send(reports).is_err() {
                        break;
                    }
                }
                Err(e) => warn!("could not read the datapath's observations: {e}"),
            }
            barrier_moved = false;
            last_report = Some(now);
            next_report = now + options.report_interval;
        }
    }
    info!("agent stopped");
}

/// Takes one input in (not [`Input::Stopped`], which ends the loop).
fn take<D: Dataplane, R: InterfaceResolver>(
    agent: &mut Agent<D, R>,
    input: Input,
    (barrier_moved, synced): (&mut bool, &mut bool),
    learned: &mut bool,
) {
    match input {
        Input::Change(change) => {
            *barrier_moved |= moves_barrier(&change);
            *synced |= matches!(change, Change::Synced);
            agent.apply(change);
        }
        Input::Learned => *learned = true,
        Input::Stopped => {}
    }
}

/// What earlier runs learned for `toFQDNs` and that has not expired.
fn restored_fqdns(options: &RuntimeOptions) -> FqdnCache {
    let Some(path) = &options.fqdn_state else { return FqdnCache::new(options.fqdn_min_ttl) };
    FqdnCache::restore(options.fqdn_min_ttl, path, Instant::now()).unwrap_or_else(|e| {
        warn!(path = %path.display(), "the addresses learned for toFQDNs before cannot be restored: {e}");
        FqdnCache::new(options.fqdn_min_ttl)
    })
}

/// What the DNS proxy calls with each answer it lets through: new addresses go in the cache
/// and wake the agent's thread, which writes them to the datapath and then publishes their
/// generation on `written`. The answer waits for the generation of its newest pair, also when
/// an earlier answer taught it (two clients asking for one name at once: the second answer must
/// not overtake the first's learning).
fn learner(fqdns: Arc<Mutex<FqdnCache>>, input: mpsc::Sender<Input>, written: watch::Receiver<u64>) -> Learner {
    let input = Mutex::new(input);
    Arc::new(move |answer| {
        let learning = lock(&fqdns).learn(&answer, Instant::now());
        if learning.changed {
            lock(&input).send(Input::Learned).ok()?;
        }
        (*written.borrow() < learning.generation).then(|| Written::new(written.clone(), learning.generation))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the L7 proxy and tells the datapath where it listens; without it, redirects stay
/// closed.
fn start_proxy<D: Dataplane, R: InterfaceResolver>(
    agent: &mut Agent<D, R>,
    port: u16,
    context: ProxyContext,
) -> Option<Proxy> {
    let started = install_routing().and_then(|()| Proxy::start(port, context));
    let proxy = match started {
        Ok(proxy) => proxy,
        Err(e) => {
            warn!("no L7 proxy: connections with L7 rules are dropped (l7-unsupported): {e}");
            return None;
        }
    };
    if let Err(e) = agent.dataplane_mut().set_proxy_port(Some(proxy.port())) {
        warn!("no L7 proxy: the datapath cannot be told where it listens: {e}");
        return None;
    }
    Some(proxy)
}

/// Publishes what the datapath reported since the last time, without waiting.
fn observe<D: Dataplane, R: InterfaceResolver>(
    agent: &Agent<D, R>,
    events: &mut dyn FlowEvents,
    hub: &FlowHub,
    options: &RuntimeOptions,
) {
    let now = Timestamp::now();
    events.read(Duration::ZERO, &mut |event| {
        let flow = agent.observe(&event, now);
        if let Some(hook) = &options.on_flow {
            (hook.0)(&flow);
        }
        hub.publish(flow);
    });
}

fn moves_barrier(change: &Change) -> bool {
    matches!(change, Change::Revision(_) | Change::Rollout(_) | Change::Synced)
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::fqdn::DnsAnswer;

    #[tokio::test]
    async fn an_answer_repeating_a_pair_not_yet_written_waits_for_it_too() {
        let fqdns = Arc::new(Mutex::new(FqdnCache::new(Duration::from_secs(60))));
        let (input, inbox) = mpsc::channel();
        let (written, watch) = watch::channel(0);
        let learn = learner(fqdns, input, watch);
        let answer = || DnsAnswer {
            names: vec!["api.example.com".into()],
            addresses: vec![("10.200.99.10".parse().unwrap(), 30)],
        };
        let first = learn(answer()).expect("a new pair waits");
        assert!(matches!(inbox.try_recv(), Ok(Input::Learned)), "the agent is told");
        // Two clients asked for the name at once: the second answer comes while the agent writes.
        let second = learn(answer()).expect("a pair not written yet waits too");
        assert!(inbox.try_recv().is_err(), "nothing new for the agent");
        let (mut first, mut second) = (Box::pin(first.wait()), Box::pin(second.wait()));
        assert!((&mut first).now_or_never().is_none() && (&mut second).now_or_never().is_none());
        written.send_replace(1);
        first.await;
        second.await;
        assert!(learn(answer()).is_none(), "written: answered at once");
    }
}
