//! `palisade get rollouts`: kubectl's table, or the objects as JSON or YAML.
use std::io::Write;

use anyhow::Result;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use palisade_rollout::crd::PolicyRollout;
use palisade_rollout::engine::COND_READY;
use serde_json::{Value as Json, json};
use tabwriter::TabWriter;

use super::backend::Backend;
use super::columns::{json_path, printer_columns};
use super::{Format, GetArgs, condition, source_ref};
use crate::cmd::cluster::age;

pub(super) async fn get(backend: &Backend, args: &GetArgs, out: &mut impl Write) -> Result<()> {
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
