//! `palisade describe rollout`: the spec, the status, the candidate's audit across the nodes and
//! the Events, as `kubectl describe` lays them out.
use std::io::Write;

use anyhow::Result;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use palisade_rollout::crd::{AuditFlow, FlowEndpoint, PolicyAuditReport, PolicyRollout, RevisionRef, Verdict};
use palisade_rollout::engine::{MergedFlow, matches, merge_flows};
use palisade_rollout::wire::CONTROLLER_FIELD_MANAGER;
use serde_json::Value as Json;
use tabwriter::TabWriter;

use super::backend::Backend;
use super::source_ref;
use crate::cmd::cluster::age;
use crate::local::store::LocalEvent;

pub(super) async fn describe(backend: &Backend, name: &str, out: &mut impl Write) -> Result<()> {
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

    let conditions = status.conditions.iter().map(|c| {
        let age = age(now, c.last_transition_time.0);
        format!("{}\t{}\t{}\t{age}\t{}", c.type_, c.status, c.reason, c.message)
    });
    section(&mut w, "Conditions", "TYPE\tSTATUS\tREASON\tAGE\tMESSAGE", conditions)?;
    let history = status.history.iter().map(|h| {
        let by = h.approved_by.as_deref().unwrap_or("-");
        format!("{}\t{:?}\t{}\t{by}\t{}", h.display, h.outcome, age(now, h.recorded_at.0), h.message)
    });
    section(&mut w, "History", "REVISION\tOUTCOME\tAGE\tAPPROVED-BY\tMESSAGE", history)?;

    match &status.candidate_revision {
        None => writeln!(w, "Audit:\tno candidate")?,
        Some(candidate) => describe_audit(&mut w, rollout, candidate, reports, now)?,
    }
    if let Some(events) = events {
        describe_events(&mut w, events, now)?;
    }
    w.flush()?;
    Ok(())
}

/// A titled table of `rows` under `header` (tab-separated), or `<none>`.
fn section(w: &mut impl Write, title: &str, header: &str, rows: impl Iterator<Item = String>) -> Result<()> {
    writeln!(w, "{title}:")?;
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        writeln!(w, "  <none>")?;
        return Ok(());
    }
    writeln!(w, "  {header}")?;
    for row in rows {
        writeln!(w, "  {row}")?;
    }
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
            from: CONTROLLER_FIELD_MANAGER.into(),
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
/// flows merged across nodes (with how many nodes saw each) and the rule that denies them.
fn describe_audit(
    w: &mut impl Write,
    rollout: &PolicyRollout,
    candidate: &RevisionRef,
    reports: &[PolicyAuditReport],
    now: Timestamp,
) -> Result<()> {
    writeln!(w, "Audit of {} ({} node reports):", candidate.display, reports.len())?;
    if reports.is_empty() {
        writeln!(w, "  no node has reported yet")?;
        return Ok(());
    }
    let generation = rollout.status.as_ref().map_or(0, |s| s.audit_generation);
    writeln!(w, "  NODE\tLOADED\tENFORCING\tEVIDENCE\tOBSERVED\tNEW-DENIES\tNEW-ALLOWS")?;
    for r in reports {
        let s = &r.spec;
        let audits = s.candidate_revision.as_deref() == Some(&candidate.id) && s.audit_generation == generation;
        // How long this node's evidence has run without a reset: the clock minDuration counts.
        let evidence = match (&s.candidate_revision, &s.audit_started_at) {
            (Some(id), _) if *id == candidate.id && s.audit_generation != generation => "restarting".to_string(),
            (Some(id), Some(started)) if *id == candidate.id => age(now, started.0),
            _ => "-".into(),
        };
        let loaded = if s.loaded_revisions.contains(&candidate.id) { "yes" } else { "no" };
        let enforcing = s.enforced_revision.as_deref().unwrap_or("-");
        let (observed, denies, allows) = if audits {
            (s.totals.observed_flows.to_string(), s.totals.new_denies.to_string(), s.totals.new_allows.to_string())
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        writeln!(w, "  {}\t{loaded}\t{enforcing}\t{evidence}\t{observed}\t{denies}\t{allows}", s.node)?;
    }

    // Merged as the gate counts them: the same flow seen on many nodes is one row.
    let audited: Vec<&PolicyAuditReport> =
        reports.iter().filter(|r| r.spec.candidate_revision.as_deref() == Some(&candidate.id)).collect();
    let truncated: u64 = audited.iter().map(|r| r.spec.totals.truncated_flows).sum();
    let listed = audited.iter().flat_map(|r| r.spec.flows.iter().map(|f| (r.spec.node.as_str(), f)));
    let denied = merge_flows(listed.filter(|(_, f)| newly_denied(f)));
    if denied.is_empty() {
        writeln!(w, "  Newly denied flows:\t<none>")?;
    } else {
        writeln!(w, "  Newly denied flows:")?;
        writeln!(w, "    DIRECTION\tSUBJECT\tPEER\tPORT\tCOUNT\tNODES\tEXPECTED\tRULE")?;
        for MergedFlow { flow, nodes, count } in denied {
            // A request the L7 proxy judged shows as the request: `8080/TCP GET /admin`,
            // `53/UDP DNS api.example.com`, `9092/TCP Kafka produce orders`.
            let on = format!("{}/{}", flow.port, wire(&flow.protocol));
            let port = match (&flow.http, &flow.dns, &flow.tls, &flow.kafka) {
                (_, _, Some(tls), _) => {
                    format!("{on} TLS {}", tls.server_name.as_deref().unwrap_or("<no server name>"))
                }
                (_, _, _, Some(kafka)) if kafka.topics.is_empty() => format!("{on} Kafka {}", kafka.api_key),
                (_, _, _, Some(kafka)) => format!("{on} Kafka {} {}", kafka.api_key, kafka.topics.join(",")),
                (Some(http), ..) => format!("{on} {} {}", http.method, http.path),
                (None, Some(dns), ..) => format!("{on} DNS {}", dns.query),
                (None, None, ..) => on,
            };
            let expected = rollout.spec.audit.expected_denies.iter().any(|s| matches(s, flow));
            let expected = if expected { "yes" } else { "no" };
            writeln!(
                w,
                "    {:?}\t{}\t{}\t{port}\t{count}\t{nodes}\t{expected}\t{}",
                flow.direction,
                endpoint(&flow.subject),
                endpoint(&flow.peer),
                flow.rule.as_deref().unwrap_or("-"),
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

fn revision(r: &Option<RevisionRef>) -> String {
    r.as_ref().map_or_else(|| "<none>".into(), |r| format!("{} ({}, {})", r.display, r.id, r.commit))
}

fn when(now: Timestamp, t: &Time) -> String {
    format!("{} ({} ago)", t.0.strftime("%Y-%m-%dT%H:%M:%SZ"), age(now, t.0))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
