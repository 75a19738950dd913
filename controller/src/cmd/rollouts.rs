//! `palisade get|describe|promote|abort|suspend|resume|reconcile`: PolicyRollouts in a cluster,
//! through the kubeconfig like kubectl (and as `kubectl palisade ...`), or with `--local` in local
//! mode's state directory (`palisade local run`).
//!
//! Both backends share everything but the reads and the writes: the same rendering, and the same
//! decision of what a command changes, as a [`Request`]. In a cluster, promotion and abort write
//! `status.approval` and `status.abort` with server-side apply to the `status` subresource, each
//! under its own field manager, so that the right to promote is `patch` on
//! `policyrollouts/status` (ClusterRole `palisade-approver`) and not edit rights on the rollout
//! itself; suspend, resume and reconcile merge-patch the rollout. In local mode the request is left
//! in the store, and the running `palisade local run` applies it the same way on its next reconcile.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use jsonpath_rust::JsonPath;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, CustomResourceExt, Resource, ResourceExt};
use palisade_local::DEFAULT_STATE_DIR;
use palisade_rollout::crd::{
    Abort, Approval, AuditFlow, FlowEndpoint, Phase, PolicyAuditReport, PolicyRollout, PolicyRolloutStatus, Promotion,
    RevisionRef, Verdict,
};
use palisade_rollout::engine::{COND_PROMOTION_BLOCKED, COND_READY, matches};
use serde_json::{Value as Json, json};
use tabwriter::TabWriter;

use super::cluster::{ClusterArgs, Session, age, not_found};
use crate::controller::FIELD_MANAGER;
use crate::local::store::{LocalEvent, Request, Store};

/// Field manager of `promote`: owns `status.approval`.
pub const PROMOTE_MANAGER: &str = "palisade-promote";
/// Field manager of `abort`: owns `status.abort`.
pub const ABORT_MANAGER: &str = "palisade-abort";
/// Field manager of `suspend`, `resume` and `reconcile`.
pub const CLI_MANAGER: &str = "palisade";
/// Set to request an immediate sync, like Flux's `reconcile.fluxcd.io/requestedAt`.
pub const RECONCILE_ANNOTATION: &str = "reconcile.palisade.dev/requestedAt";

const RESOURCE: &str = "policyrollouts.palisade.dev";
/// How kubectl names a changed rollout.
const RESOURCE_PREFIX: &str = "policyrollout.palisade.dev/";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List PolicyRollouts: `get rollouts [NAME]`.
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
    /// Stop acting on new commits and audit reports (sets spec.suspend).
    Suspend(NameArgs),
    /// Act on new commits again (clears spec.suspend).
    Resume(NameArgs),
    /// Ask the controller to sync the source now (annotates reconcile.palisade.dev/requestedAt).
    Reconcile(NameArgs),
}

#[derive(Subcommand, Debug)]
pub enum GetKind {
    #[command(visible_aliases = ["rollout", "policyrollouts", "policyrollout", "pro"])]
    Rollouts(GetArgs),
}

#[derive(Subcommand, Debug)]
pub enum DescribeKind {
    #[command(visible_aliases = ["rollouts", "policyrollout", "policyrollouts", "pro"])]
    Rollout(NameArgs),
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// One rollout; all of them when unset.
    name: Option<String>,
    #[command(flatten)]
    target: Target,
    /// List rollouts in every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
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
            Command::Get { what: GetKind::Rollouts(args) } => &args.target,
            Command::Describe { what: DescribeKind::Rollout(args) }
            | Command::Promote(args)
            | Command::Abort(args)
            | Command::Suspend(args)
            | Command::Resume(args)
            | Command::Reconcile(args) => &args.target,
        }
    }
}

pub fn run(command: Command) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let backend = Backend::connect(command.target()).await?;
        execute(&backend, command, &mut std::io::stdout().lock()).await
    })
}

/// Runs one command against `backend`, printing to `out`. The command's own target flags are
/// not looked at: `backend` is where it acts.
pub async fn execute(backend: &Backend, command: Command, out: &mut impl Write) -> Result<u8> {
    match command {
        Command::Get { what: GetKind::Rollouts(args) } => get(backend, &args, out).await?,
        Command::Describe { what: DescribeKind::Rollout(args) } => describe(backend, &args.name, out).await?,
        Command::Promote(args) => act(backend, &args.name, |r, now| promotion(r, backend.user()?, now), out).await?,
        Command::Abort(args) => act(backend, &args.name, |r, now| abortion(r, backend.user()?, now), out).await?,
        Command::Suspend(args) => act(backend, &args.name, |r, _| suspension(r, true), out).await?,
        Command::Resume(args) => act(backend, &args.name, |r, _| suspension(r, false), out).await?,
        Command::Reconcile(args) => act(backend, &args.name, reconciliation, out).await?,
    }
    Ok(0)
}

/// Where rollouts are read and changes written.
pub enum Backend {
    /// The API server.
    Cluster(Session),
    /// Local mode's store, where the running `palisade local run` picks requests up.
    Local(LocalState),
}

/// Local mode's store as the CLI sees it.
pub struct LocalState {
    pub state_dir: PathBuf,
    pub store: Store,
    /// `--namespace`; every namespace when unset.
    pub namespace: Option<String>,
    /// Who approves or aborts: `$SUDO_USER`, `$USER` or `local`.
    pub user: String,
    pub now: Timestamp,
}

impl LocalState {
    pub fn new(state_dir: &Path, namespace: Option<String>) -> LocalState {
        let user = ["SUDO_USER", "USER"]
            .into_iter()
            .find_map(|var| std::env::var(var).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "local".into());
        LocalState {
            state_dir: state_dir.to_owned(),
            store: Store::new(state_dir),
            namespace,
            user,
            now: Timestamp::now(),
        }
    }

    /// The store, once it is known to exist: a command on a state directory that local mode
    /// never ran in says so instead of showing an empty list.
    fn store(&self) -> Result<&Store> {
        if !self.store.dir().is_dir() {
            bail!(
                "no local mode state in {}: start `palisade local run` (or give the --state it uses)",
                self.state_dir.display()
            );
        }
        Ok(&self.store)
    }
}

impl Backend {
    pub async fn connect(target: &Target) -> Result<Backend> {
        if target.local {
            let state = target.state.clone().unwrap_or_else(|| DEFAULT_STATE_DIR.into());
            return Ok(Backend::Local(LocalState::new(&state, target.cluster.namespace.clone())));
        }
        Ok(Backend::Cluster(Session::connect(&target.cluster).await?))
    }

    fn now(&self) -> Timestamp {
        match self {
            Backend::Cluster(session) => session.now,
            Backend::Local(local) => local.now,
        }
    }

    /// Who is approving or aborting, for the record in the status.
    fn user(&self) -> Result<&str> {
        match self {
            Backend::Cluster(session) => session.user(),
            Backend::Local(local) => Ok(&local.user),
        }
    }

    /// The namespace commands act in; None for every namespace (local mode without --namespace).
    fn namespace(&self) -> Option<&str> {
        match self {
            Backend::Cluster(session) => Some(&session.namespace),
            Backend::Local(local) => local.namespace.as_deref(),
        }
    }

    async fn list(&self, all_namespaces: bool) -> Result<Vec<PolicyRollout>> {
        match self {
            Backend::Cluster(session) if all_namespaces => {
                Ok(Api::<PolicyRollout>::all(session.client.clone()).list(&ListParams::default()).await?.items)
            }
            Backend::Cluster(session) => Ok(api(session).list(&ListParams::default()).await?.items),
            Backend::Local(local) => {
                let mut rollouts = local.store()?.rollouts()?;
                if let Some(namespace) = local.namespace.as_deref().filter(|_| !all_namespaces) {
                    rollouts.retain(|r| r.metadata.namespace.as_deref() == Some(namespace));
                }
                Ok(rollouts)
            }
        }
    }

    async fn rollout(&self, name: &str) -> Result<PolicyRollout> {
        match self {
            Backend::Cluster(session) => {
                api(session).get(name).await.map_err(|e| not_found(e, RESOURCE, name, &session.namespace))
            }
            Backend::Local(local) => {
                local.store()?.find_rollout(local.namespace.as_deref(), name)?.ok_or_else(|| match &local.namespace {
                    Some(namespace) => anyhow!("{RESOURCE} \"{name}\" not found in namespace \"{namespace}\""),
                    None => anyhow!("{RESOURCE} \"{name}\" not found in local mode ({})", local.state_dir.display()),
                })
            }
        }
    }

    async fn reports(&self, rollout: &PolicyRollout) -> Result<Vec<PolicyAuditReport>> {
        let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
        match self {
            Backend::Cluster(session) => Ok(Api::<PolicyAuditReport>::namespaced(session.client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .context("listing PolicyAuditReports")?
                .items
                .into_iter()
                .filter(|r| r.spec.rollout == name)
                .collect()),
            Backend::Local(local) => local.store()?.reports(&namespace, &name),
        }
    }

    /// The rollout's Events, oldest first; None when they cannot be listed (kubectl describe
    /// leaves them out then too).
    async fn events(&self, rollout: &PolicyRollout) -> Option<Vec<EventRow>> {
        let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
        let mut rows: Vec<EventRow> = match self {
            Backend::Cluster(session) => {
                let kind = PolicyRollout::kind(&());
                let mut fields = format!("involvedObject.kind={kind},involvedObject.name={name}");
                if let Some(uid) = &rollout.metadata.uid {
                    fields.push_str(&format!(",involvedObject.uid={uid}"));
                }
                let events = Api::<CoreEvent>::namespaced(session.client.clone(), &namespace)
                    .list(&ListParams::default().fields(&fields))
                    .await
                    .ok()?;
                let about = |e: &CoreEvent| {
                    e.involved_object.name.as_deref() == Some(&name) && e.involved_object.kind.as_deref() == Some(&kind)
                };
                events.items.iter().filter(|e| about(e)).filter_map(EventRow::from_core).collect()
            }
            Backend::Local(local) => {
                local.store().ok()?.events(&namespace, &name).ok()?.iter().map(EventRow::from_local).collect()
            }
        };
        rows.sort_by_key(|e| e.last);
        Some(rows)
    }

    /// Makes the change `request` describes, as the controller expects it.
    async fn write(&self, rollout: &PolicyRollout, request: Request) -> Result<()> {
        let name = rollout.name_any();
        let session = match self {
            Backend::Local(local) => {
                let namespace = rollout.namespace().unwrap_or_default();
                return local.store()?.push_request(&namespace, &name, &request);
            }
            Backend::Cluster(session) => session,
        };
        match request {
            Request::Approve(approval) => {
                apply_status(session, &name, PROMOTE_MANAGER, json!({ "approval": approval })).await
            }
            Request::Abort(abort) => apply_status(session, &name, ABORT_MANAGER, json!({ "abort": abort })).await,
            Request::Suspend(suspend) => merge_patch(session, &name, json!({"spec": {"suspend": suspend}})).await,
            Request::Reconcile(at) => {
                let at = at.0.to_string();
                merge_patch(session, &name, json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: at}}})).await
            }
        }
    }
}

fn api(session: &Session) -> Api<PolicyRollout> {
    Api::namespaced(session.client.clone(), &session.namespace)
}

async fn get(backend: &Backend, args: &GetArgs, out: &mut impl Write) -> Result<()> {
    let rollouts = match &args.name {
        Some(name) => vec![backend.rollout(name).await?],
        None => backend.list(args.all_namespaces).await?,
    };
    // Local mode without --namespace lists every namespace, and says which once there are several.
    let namespaces = args.all_namespaces
        || backend.namespace().is_none() && rollouts.windows(2).any(|w| w[0].namespace() != w[1].namespace());
    let now = backend.now();
    match args.output {
        Some(Format::Json) => writeln!(out, "{}", serde_json::to_string_pretty(&printable(&rollouts, &args.name)?)?)?,
        Some(Format::Yaml) => write!(out, "{}", palisade_policy::yaml::to_yaml(&printable(&rollouts, &args.name)?))?,
        Some(Format::Wide) => table(&rollouts, namespaces, true, now, out)?,
        None if rollouts.is_empty() => match backend.namespace().filter(|_| !args.all_namespaces) {
            Some(namespace) => writeln!(out, "No resources found in {namespace} namespace.")?,
            None => writeln!(out, "No resources found.")?,
        },
        None => table(&rollouts, namespaces, false, now, out)?,
    }
    Ok(())
}

/// What `-o json|yaml` prints: the object for a name, else a `List`, without managedFields.
fn printable(rollouts: &[PolicyRollout], name: &Option<String>) -> Result<Json> {
    let mut items = Vec::with_capacity(rollouts.len());
    for rollout in rollouts {
        let mut value = serde_json::to_value(rollout)?;
        if let Some(metadata) = value.get_mut("metadata").and_then(Json::as_object_mut) {
            metadata.remove("managedFields");
        }
        items.push(value);
    }
    if name.is_some()
        && let [item] = items.as_mut_slice()
    {
        return Ok(item.take());
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}))
}

/// kubectl's table: NAME, then the CRD's printer columns (so the two never disagree); `wide` adds
/// the promotion mode, the source ref and the Ready message.
fn table(rollouts: &[PolicyRollout], namespaces: bool, wide: bool, now: Timestamp, out: &mut impl Write) -> Result<()> {
    let columns = printer_columns();
    let mut w = TabWriter::new(out).padding(3);
    let mut header: Vec<String> = Vec::new();
    if namespaces {
        header.push("NAMESPACE".into());
    }
    header.push("NAME".into());
    header.extend(columns.iter().map(|c| c.name.to_uppercase()));
    if wide {
        header.extend(["PROMOTION", "REF", "MESSAGE"].map(String::from));
    }
    writeln!(w, "{}", header.join("\t"))?;
    for rollout in rollouts {
        let value = serde_json::to_value(rollout)?;
        let mut row = Vec::new();
        if namespaces {
            row.push(rollout.namespace().unwrap_or_default());
        }
        row.push(rollout.name_any());
        for column in &columns {
            let cell = json_path(&value, &column.json_path);
            row.push(match (column.type_.as_str(), cell) {
                ("date", Some(Json::String(s))) => s.parse::<Timestamp>().map_or_else(|_| s.clone(), |t| age(now, t)),
                (_, Some(Json::String(s))) => s.clone(),
                (_, Some(Json::Null) | None) => String::new(),
                (_, Some(other)) => other.to_string(),
            });
        }
        if wide {
            let status = rollout.status.clone().unwrap_or_default();
            row.push(format!("{:?}", rollout.spec.promotion));
            row.push(source_ref(rollout));
            row.push(condition(&status, COND_READY).map(|c| c.message.clone()).unwrap_or_default());
        }
        writeln!(w, "{}", row.join("\t"))?;
    }
    w.flush()?;
    Ok(())
}

/// The printer columns kubectl shows for PolicyRollouts (priority 0), from the CRD itself.
pub fn printer_columns() -> Vec<PrinterColumn> {
    let crd = PolicyRollout::crd();
    let version = crd.spec.versions.iter().find(|v| v.served).expect("the CRD serves a version");
    version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| PrinterColumn { name: c.name.clone(), type_: c.type_.clone(), json_path: c.json_path.clone() })
        .collect()
}

pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
}

/// A printer column's JSONPath, as kubectl reads it (`.a.b`, `[?(@.key=="value")]`, with `$`
/// implied): the first value it selects, or None when it selects nothing or does not parse.
pub fn json_path<'a>(value: &'a Json, path: &str) -> Option<&'a Json> {
    let path = if path.starts_with('$') { path.to_owned() } else { format!("${path}") };
    value.query(&path).ok()?.into_iter().next()
}

fn condition<'a>(status: &'a PolicyRolloutStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn source_ref(rollout: &PolicyRollout) -> String {
    let r = &rollout.spec.source.git_ref;
    let kinds = [("branch", &r.branch), ("tag", &r.tag), ("semver", &r.semver), ("commit", &r.commit)];
    kinds.iter().find_map(|(kind, v)| v.as_ref().map(|v| format!("{kind} {v}"))).unwrap_or_default()
}

fn revision(r: &Option<RevisionRef>) -> String {
    r.as_ref().map_or_else(|| "<none>".into(), |r| format!("{} ({}, {})", r.display, r.id, r.commit))
}

fn when(now: Timestamp, t: &Time) -> String {
    format!("{} ({} ago)", t.0.strftime("%Y-%m-%dT%H:%M:%SZ"), age(now, t.0))
}

async fn describe(backend: &Backend, name: &str, out: &mut impl Write) -> Result<()> {
    let rollout = backend.rollout(name).await?;
    let reports = backend.reports(&rollout).await?;
    let events = backend.events(&rollout).await;
    render_description(&rollout, &reports, events.as_deref(), backend.now(), out)
}

/// What `describe rollout` prints: the spec, the status, the audit of the candidate across the
/// nodes' `reports`, and the Events (none listed when `events` is None).
pub fn render_description(
    rollout: &PolicyRollout,
    reports: &[PolicyAuditReport],
    events: Option<&[EventRow]>,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<()> {
    let spec = &rollout.spec;
    let status = rollout.status.clone().unwrap_or_default();
    let mut w = TabWriter::new(out).padding(1);

    writeln!(w, "Name:\t{}", rollout.name_any())?;
    writeln!(w, "Namespace:\t{}", rollout.namespace().unwrap_or_default())?;
    if let Some(created) = &rollout.metadata.creation_timestamp {
        writeln!(w, "Created:\t{}", when(now, created))?;
    }
    let source = &spec.source;
    let mut from = format!("{} ({}", source.url, source_ref(rollout));
    if let Some(path) = &source.path {
        from.push_str(&format!(", path {path}"));
    }
    from.push_str(&format!(", every {})", source.interval));
    writeln!(w, "Source:\t{from}")?;
    if let Some(verify) = &source.verify {
        writeln!(
            w,
            "Verify:\t{:?} signatures ({:?}), keys from secret {}",
            verify.provider, verify.mode, verify.keys_ref.name
        )?;
    }
    let gates = &spec.audit;
    writeln!(
        w,
        "Audit gates:\tat least {}, {} flow(s) per endpoint, at most {} unexpected new denies, {} expected-deny selector(s)",
        gates.min_duration,
        gates.min_flows_per_endpoint,
        gates.max_new_denies,
        gates.expected_denies.len()
    )?;
    writeln!(w, "Promotion:\t{:?}", spec.promotion)?;
    let rollback = &spec.rollback;
    writeln!(
        w,
        "Rollback:\twatch {} after promotion, roll back above +{} drops/min, fast-track reverts: {}",
        rollback.post_promotion_window, rollback.max_drop_increase, rollback.fast_track_reverts
    )?;
    writeln!(w, "Scope:\t{:?}", spec.scope)?;
    writeln!(w, "Suspended:\t{}", spec.suspend)?;

    writeln!(w, "Status:")?;
    writeln!(w, "  Phase:\t{:?}", status.phase)?;
    writeln!(w, "  Enforced:\t{}", revision(&status.enforced_revision))?;
    writeln!(w, "  Candidate:\t{}", revision(&status.candidate_revision))?;
    if let Some(started) = &status.audit_started_at {
        writeln!(w, "  Audit started:\t{}", when(now, started))?;
    }
    writeln!(
        w,
        "  Audit:\t{} flows observed, {} new denies ({} unexpected), {} new allows",
        status.observed_flows, status.new_denies, status.unexpected_new_denies, status.new_allows
    )?;
    if let Some(a) = &status.approval {
        writeln!(w, "  Approval:\t{} by {} at {}", a.revision, a.approved_by, when(now, &a.approved_at))?;
    }
    if let Some(a) = &status.abort {
        writeln!(w, "  Abort:\t{} by {} at {}", a.revision, a.aborted_by, when(now, &a.aborted_at))?;
    }
    if let Some(attempt) = &status.last_attempted_revision {
        let result = attempt.reason.as_deref().map_or_else(|| "staged".to_string(), |r| format!("not staged: {r}"));
        writeln!(w, "  Last attempt:\t{} ({result})", attempt.display)?;
        for error in &attempt.errors {
            writeln!(w, "    {error}")?;
        }
    }
    if let Some(generation) = status.observed_generation {
        writeln!(w, "  Observed generation:\t{generation}")?;
    }

    writeln!(w, "Conditions:")?;
    if status.conditions.is_empty() {
        writeln!(w, "  <none>")?;
    } else {
        writeln!(w, "  TYPE\tSTATUS\tREASON\tAGE\tMESSAGE")?;
        for c in &status.conditions {
            writeln!(
                w,
                "  {}\t{}\t{}\t{}\t{}",
                c.type_,
                c.status,
                c.reason,
                age(now, c.last_transition_time.0),
                c.message
            )?;
        }
    }

    writeln!(w, "History:")?;
    if status.history.is_empty() {
        writeln!(w, "  <none>")?;
    } else {
        writeln!(w, "  REVISION\tOUTCOME\tAGE\tAPPROVED-BY\tMESSAGE")?;
        for h in &status.history {
            let by = h.approved_by.as_deref().unwrap_or("-");
            writeln!(w, "  {}\t{:?}\t{}\t{by}\t{}", h.display, h.outcome, age(now, h.recorded_at.0), h.message)?;
        }
    }

    match &status.candidate_revision {
        None => writeln!(w, "Audit:\tno candidate")?,
        Some(candidate) => describe_audit(&mut w, rollout, candidate, reports)?,
    }
    if let Some(events) = events {
        describe_events(&mut w, events, now)?;
    }
    w.flush()?;
    Ok(())
}

/// One Event as `kubectl describe` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub type_: String,
    pub reason: String,
    pub first: Timestamp,
    pub last: Timestamp,
    pub count: i32,
    pub from: String,
    pub message: String,
}

impl EventRow {
    /// An Event of the API (events.k8s.io ones included, as the core API shows them).
    pub fn from_core(e: &CoreEvent) -> Option<EventRow> {
        let first = e.event_time.as_ref().map(|t| t.0).or(e.first_timestamp.as_ref().map(|t| t.0))?;
        let (last, count) = match &e.series {
            Some(series) => (series.last_observed_time.as_ref().map_or(first, |t| t.0), series.count.unwrap_or(1)),
            None => (e.last_timestamp.as_ref().map_or(first, |t| t.0), e.count.unwrap_or(1)),
        };
        let from = [e.source.as_ref().and_then(|s| s.component.clone()), e.reporting_component.clone()]
            .into_iter()
            .flatten()
            .find(|c| !c.is_empty())
            .unwrap_or_default();
        Some(EventRow {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            first,
            last,
            count,
            from,
            message: e.message.clone().unwrap_or_default(),
        })
    }

    /// An Event of local mode's controller.
    pub fn from_local(e: &LocalEvent) -> EventRow {
        EventRow {
            type_: e.type_.clone(),
            reason: e.reason.clone(),
            first: e.time.0,
            last: e.time.0,
            count: 1,
            from: FIELD_MANAGER.into(),
            message: e.message.clone(),
        }
    }
}

/// kubectl's Events table: an event seen several times shows its last age and `(xN over AGE)`.
fn describe_events(w: &mut impl Write, events: &[EventRow], now: Timestamp) -> Result<()> {
    if events.is_empty() {
        writeln!(w, "Events:\t<none>")?;
        return Ok(());
    }
    writeln!(w, "Events:")?;
    writeln!(w, "  Type\tReason\tAge\tFrom\tMessage")?;
    writeln!(w, "  ----\t------\t----\t----\t-------")?;
    for e in events {
        let seen = if e.count > 1 {
            format!("{} (x{} over {})", age(now, e.last), e.count, age(now, e.first))
        } else {
            age(now, e.first)
        };
        writeln!(w, "  {}\t{}\t{seen}\t{}\t{}", e.type_, e.reason, e.from, e.message.trim())?;
    }
    Ok(())
}

/// The candidate's audit over every node: the promotion barrier per node, then the newly denied
/// flows summed across nodes with the rule that denies them.
fn describe_audit(
    w: &mut impl Write,
    rollout: &PolicyRollout,
    candidate: &RevisionRef,
    reports: &[PolicyAuditReport],
) -> Result<()> {
    writeln!(w, "Audit of {} ({} node reports):", candidate.display, reports.len())?;
    if reports.is_empty() {
        writeln!(w, "  no node has reported yet")?;
        return Ok(());
    }
    writeln!(w, "  NODE\tLOADED\tENFORCING\tOBSERVED\tNEW-DENIES\tNEW-ALLOWS")?;
    for r in reports {
        let s = &r.spec;
        let audits = s.candidate_revision.as_deref() == Some(&candidate.id);
        let loaded = if s.loaded_revisions.contains(&candidate.id) { "yes" } else { "no" };
        let enforcing = s.enforced_revision.as_deref().unwrap_or("-");
        let (observed, denies, allows) = if audits {
            (s.totals.observed_flows.to_string(), s.totals.new_denies.to_string(), s.totals.new_allows.to_string())
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        writeln!(w, "  {}\t{loaded}\t{enforcing}\t{observed}\t{denies}\t{allows}", s.node)?;
    }

    // Flows are named by labels, so the same flow seen on two nodes has the same key.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Key {
        direction: String,
        subject: String,
        peer: String,
        port: String,
        rule: String,
    }
    let mut denied: BTreeMap<Key, (u64, Vec<&str>, bool)> = BTreeMap::new();
    let mut truncated = 0;
    let audited = || reports.iter().filter(|r| r.spec.candidate_revision.as_deref() == Some(&candidate.id));
    for report in audited() {
        truncated += report.spec.totals.truncated_flows;
        for flow in report.spec.flows.iter().filter(|f| newly_denied(f)) {
            let key = Key {
                direction: format!("{:?}", flow.direction),
                subject: endpoint(&flow.subject),
                peer: endpoint(&flow.peer),
                port: format!("{}/{}", flow.port, wire(&flow.protocol)),
                rule: flow.rule.clone().unwrap_or_else(|| "-".into()),
            };
            let expected = rollout.spec.audit.expected_denies.iter().any(|s| matches(s, flow));
            let entry = denied.entry(key).or_insert((0, Vec::new(), expected));
            entry.0 += flow.count;
            entry.1.push(&report.spec.node);
        }
    }
    if denied.is_empty() {
        writeln!(w, "  Newly denied flows:\t<none>")?;
    } else {
        let mut rows: Vec<_> = denied.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
        writeln!(w, "  Newly denied flows:")?;
        writeln!(w, "    DIRECTION\tSUBJECT\tPEER\tPORT\tCOUNT\tNODES\tEXPECTED\tRULE")?;
        for (k, (count, nodes, expected)) in rows {
            let expected = if expected { "yes" } else { "no" };
            writeln!(
                w,
                "    {}\t{}\t{}\t{}\t{count}\t{}\t{expected}\t{}",
                k.direction,
                k.subject,
                k.peer,
                k.port,
                nodes.join(","),
                k.rule
            )?;
        }
    }
    if truncated > 0 {
        writeln!(w, "  ({truncated} more flows with a changed verdict were not listed by the agents)")?;
    }
    Ok(())
}

/// An enum as the API spells it (`TCP`, `openpgp`, `TagAndHEAD`).
fn wire(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Json::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn newly_denied(flow: &AuditFlow) -> bool {
    flow.enforced_verdict == Verdict::Allow && flow.candidate_verdict == Verdict::Deny
}

/// A side of a flow: `namespace/workload`, the CIDR outside the cluster, or its labels.
fn endpoint(e: &FlowEndpoint) -> String {
    let ns = e.namespace.as_deref().map(|ns| format!("{ns}/")).unwrap_or_default();
    if let Some(workload) = &e.workload {
        return format!("{ns}{workload}");
    }
    if let Some(cidr) = &e.cidr {
        return cidr.clone();
    }
    let labels: Vec<_> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{ns}{{{}}}", labels.join(","))
}

/// What a command decided: nothing to change (with what to print), or a change to make and
/// what to print once it is made.
#[derive(Debug, PartialEq)]
enum Plan {
    Unchanged(String),
    Change(Request, String),
}

/// Reads the rollout, decides with `plan` (given the rollout and the time), makes the change
/// and prints what happened.
async fn act(
    backend: &Backend,
    name: &str,
    plan: impl FnOnce(&PolicyRollout, Timestamp) -> Result<Plan>,
    out: &mut impl Write,
) -> Result<()> {
    let rollout = backend.rollout(name).await?;
    let message = match plan(&rollout, backend.now())? {
        Plan::Unchanged(message) => message,
        Plan::Change(request, message) => {
            backend.write(&rollout, request).await?;
            message
        }
    };
    writeln!(out, "{message}")?;
    Ok(())
}

/// `promote`: approve the candidate of a Manual rollout while it is auditing.
fn promotion(rollout: &PolicyRollout, user: &str, now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let Some(candidate) = status.candidate_revision.clone() else {
        bail!(
            "policyrollout/{name} has no candidate to promote (phase {:?}, enforcing {})",
            status.phase,
            status.enforced_revision.as_ref().map_or("nothing", |r| r.display.as_str())
        );
    };
    if rollout.spec.promotion == Promotion::Auto {
        bail!(
            "policyrollout/{name} promotes automatically (spec.promotion: Auto): {} is promoted as soon as its audit passes",
            candidate.display
        );
    }
    if let Some(a) = status.approval.as_ref().filter(|a| a.revision == candidate.id) {
        return Ok(Plan::Unchanged(format!(
            "{RESOURCE_PREFIX}{name} unchanged: {} was already approved by {}",
            candidate.display, a.approved_by
        )));
    }
    match status.phase {
        Phase::Auditing => {}
        Phase::Promoting => bail!("policyrollout/{name} is already promoting {}", candidate.display),
        phase => {
            let why = condition(&status, COND_PROMOTION_BLOCKED)
                .or_else(|| condition(&status, COND_READY))
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            bail!(
                "policyrollout/{name} cannot be promoted in phase {phase:?}{why}\n(an approval never overrides the audit gates; `palisade describe rollout {name}` shows the denied flows)"
            );
        }
    }
    let approval = Approval { revision: candidate.id.clone(), approved_by: user.into(), approved_at: Time(now) };
    let message = format!(
        "{RESOURCE_PREFIX}{name} approved: {} ({}) as {user}; it is promoted once its audit passes",
        candidate.display, candidate.id
    );
    Ok(Plan::Change(Request::Approve(approval), message))
}

/// `abort`: drop the candidate, unless nodes may already have flipped to it.
fn abortion(rollout: &PolicyRollout, user: &str, now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let Some(candidate) = status.candidate_revision.clone() else {
        bail!("policyrollout/{name} has no candidate to abort (phase {:?})", status.phase);
    };
    if status.phase == Phase::Promoting {
        bail!(
            "policyrollout/{name} is already promoting {}: nodes may have flipped; revert the commit instead",
            candidate.display
        );
    }
    if status.abort.as_ref().is_some_and(|a| a.revision == candidate.id && a.commit == candidate.commit) {
        return Ok(Plan::Unchanged(format!(
            "{RESOURCE_PREFIX}{name} unchanged: {} was already aborted",
            candidate.display
        )));
    }
    let enforced = status.enforced_revision.as_ref().map_or("nothing", |r| r.display.as_str());
    let message =
        format!("{RESOURCE_PREFIX}{name} aborted: {} is dropped; {enforced} stays enforced", candidate.display);
    let abort = Abort {
        revision: candidate.id.clone(),
        commit: candidate.commit.clone(),
        aborted_by: user.into(),
        aborted_at: Time(now),
    };
    Ok(Plan::Change(Request::Abort(abort), message))
}

/// `suspend` and `resume`.
fn suspension(rollout: &PolicyRollout, suspend: bool) -> Result<Plan> {
    let name = rollout.name_any();
    if rollout.spec.suspend == suspend {
        let state = if suspend { "suspended" } else { "not suspended" };
        return Ok(Plan::Unchanged(format!("{RESOURCE_PREFIX}{name} unchanged: already {state}")));
    }
    let done = if suspend { "suspended" } else { "resumed" };
    Ok(Plan::Change(Request::Suspend(suspend), format!("{RESOURCE_PREFIX}{name} {done}")))
}

/// `reconcile`: ask for a sync now.
fn reconciliation(rollout: &PolicyRollout, now: Timestamp) -> Result<Plan> {
    let name = rollout.name_any();
    if rollout.spec.suspend {
        bail!("policyrollout/{name} is suspended; `palisade resume {name}` first");
    }
    let message = format!("{RESOURCE_PREFIX}{name} annotated: reconcile requested at {now}");
    Ok(Plan::Change(Request::Reconcile(Time(now)), message))
}

/// Server-side apply of one status field under `manager`. Forced: the person asking owns the
/// decision, even over a value the controller last wrote.
async fn apply_status(session: &Session, name: &str, manager: &str, status: Json) -> Result<()> {
    let body = json!({
        "apiVersion": PolicyRollout::api_version(&()),
        "kind": PolicyRollout::kind(&()),
        "metadata": {"name": name},
        "status": status,
    });
    api(session)
        .patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&body))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => anyhow!(
                "{}\n(needs `patch` on policyrollouts/status in namespace {}: the palisade-approver ClusterRole grants it)",
                s.message,
                session.namespace
            ),
            e => not_found(e, RESOURCE, name, &session.namespace),
        })?;
    Ok(())
}

async fn merge_patch(session: &Session, name: &str, patch: Json) -> Result<()> {
    let params = PatchParams { field_manager: Some(CLI_MANAGER.into()), ..PatchParams::default() };
    api(session)
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| not_found(e, RESOURCE, name, &session.namespace))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_reads_every_printer_column() {
        let value = json!({
            "metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"},
            "status": {
                "phase": "Auditing",
                "newDenies": 3,
                "enforcedRevision": {"display": "main@a1b2c3d"},
                "candidateRevision": {"display": "main@b2c3d4e"},
                "conditions": [{"type": "Stalled", "status": "False"}, {"type": "Ready", "status": "True"}],
            },
        });
        for column in printer_columns() {
            assert!(json_path(&value, &column.json_path).is_some(), "{} ({}) resolves", column.name, column.json_path);
        }
        assert_eq!(json_path(&value, ".status.conditions[?(@.type==\"Ready\")].status"), Some(&json!("True")));
        assert_eq!(json_path(&value, ".status.missing"), None);
    }

    #[test]
    fn repeated_events_read_like_kubectl() {
        let now: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let core: CoreEvent = serde_json::from_value(json!({
            "metadata": {"name": "web.1"},
            "involvedObject": {"kind": "PolicyRollout", "name": "web"},
            "type": "Warning", "reason": "SourceUnreachable", "message": "fetch failed\n",
            "firstTimestamp": "2025-06-01T11:40:00Z", "lastTimestamp": "2025-06-01T11:58:00Z", "count": 3,
            "source": {"component": "palisade-controller"},
        }))
        .unwrap();
        let row = EventRow::from_core(&core).unwrap();
        assert_eq!((row.count, row.from.as_str()), (3, "palisade-controller"));
        let mut out = Vec::new();
        describe_events(&mut out, &[row], now).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Events:\n  Type\tReason\tAge\tFrom\tMessage\n  ----\t------\t----\t----\t-------\n  \
             Warning\tSourceUnreachable\t2m (x3 over 20m)\tpalisade-controller\tfetch failed\n"
        );
        let mut out = Vec::new();
        describe_events(&mut out, &[], now).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Events:\t<none>\n");
    }
}
