use std::io::Write;

use anyhow::Result;
use palisade_common::{self as dp, PolicyEntry, Verdict};
use palisade_policy::compile::EndpointPolicy;
use palisade_policy::trace::{DROP_L7_UNSUPPORTED, describe_entry};
use palisade_policy::{Direction, FlowPort, l7};
use serde_json::json;
use tabwriter::TabWriter;

use super::{EngineArgs, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub fn run(args: Args) -> Result<u8> {
    let engine = args.engine.engine()?;
    let endpoints: Vec<EndpointPolicy> = engine.endpoints().collect();
    // A redirect goes to the node's proxy; the datapath denies one no proxy judges (HTTP, TLS
    // or Kafka rules not on TCP, SCTP).
    let datapath =
        |e: &EndpointPolicy, d: Direction, entry: &PolicyEntry| match (entry.value.verdict(), entry.key.protocol()) {
            (Verdict::Redirect, Some(protocol)) => {
                let port = FlowPort { protocol, port: entry.key.port() };
                let kinds = engine.l7_kinds(&e.pod.namespace, &e.pod.name, d, entry.key.identity(), port);
                match l7::unproxied(protocol, &kinds, None) {
                    Some(_) => ("deny", Some(DROP_L7_UNSUPPORTED)),
                    None => ("proxy", None),
                }
            }
            (v, _) => (v.as_str(), None),
        };
    if args.output == Output::Json {
        let list: Vec<_> = endpoints
            .iter()
            .map(|e| {
                let direction = |d: Direction| {
                    let policy = e.group.direction(d);
                    json!({
                        "enforcement": policy.enforcement,
                        "entries": policy.entries().iter().map(|entry| json!({
                            "identity": entry.key.identity(),
                            // The IP protocol number, as plans have always shown it.
                            "protocol": entry.key.protocol().map(dp::Protocol::raw),
                            "ports": entry.key.protocol().map(|_| entry.key.port_range()),
                            "verdict": entry.value.verdict().as_str(),
                            "datapath": datapath(e, d, entry).0,
                            "drop_reason": datapath(e, d, entry).1,
                            "cookie": entry.value.cookie,
                            "rule": engine.policies().describe_cookie(entry.value.cookie),
                        })).collect::<Vec<_>>(),
                    })
                };
                json!({
                    "endpoint": e.pod.key(),
                    "identity": e.identity.id,
                    "labels": e.identity.labels.to_string(),
                    "ingress": direction(Direction::Ingress),
                    "egress": direction(Direction::Egress),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    let mut out = TabWriter::new(std::io::stdout()).padding(2);
    for e in &endpoints {
        writeln!(out, "Endpoint {} (identity {}: {})", e.pod.key(), e.identity.id, e.identity.labels)?;
        for d in Direction::BOTH {
            let policy = e.group.direction(d);
            let enforcement = serde_json::to_value(policy.enforcement)?.as_str().unwrap_or_default().to_string();
            writeln!(out, "  {} ({enforcement}, {} entries)", d.as_str(), policy.len())?;
            writeln!(out, "    VERDICT\tENTRY\tPEER\tRULE")?;
            for entry in policy.entries() {
                let peer = match entry.key.identity() {
                    dp::IDENTITY_ANY => "*".to_string(),
                    id => engine.identities().get(id).map_or_else(|| id.to_string(), |i| i.short_name()),
                };
                let shown = match datapath(e, d, &entry) {
                    (_, Some(reason)) => format!("{} (denied: {reason})", entry.value.verdict().as_str()),
                    (_, None) => entry.value.verdict().as_str().to_string(),
                };
                writeln!(
                    out,
                    "    {}\t{}\t{}\t{}",
                    shown,
                    describe_entry(&entry.key),
                    peer,
                    engine.policies().describe_cookie(entry.value.cookie)
                )?;
            }
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(0)
}
