//! `palisade get rollouts|revisions|reports`: kubectl's table, or the objects as JSON or YAML;
//! with `--watch`, then a line (an object for JSON and YAML) per change, like `kubectl get -w`.
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde_json::{Value as Json, json};
use tabwriter::TabWriter;

use super::backend::{Backend, Change, Query};
use super::columns::{json_path, printer_columns_of};
use super::kinds::Listed;
use super::{Format, GetArgs};
use crate::cmd::cluster::age;

pub(super) async fn get<K: Listed>(backend: &Backend, args: &GetArgs, out: &mut impl Write) -> Result<()> {
    if args.watch {
        return match watch::<K>(backend, args, out).await {
            // The reader went away (`palisade get rollouts -w | head`): the watch is over.
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
            {
                Ok(())
            }
            result => result,
        };
    }
    let objects: Vec<K> = match &args.name {
        Some(name) => vec![backend.get_of::<K>(name).await?],
        None => backend.list_of::<K>(args.all_namespaces, args.selector.as_deref()).await?,
    };
    let view = View::new(backend, args, &objects);
    match args.output {
        Some(Format::Json) => writeln!(out, "{}", serde_json::to_string_pretty(&printable(&objects, &args.name)?)?)?,
        Some(Format::Yaml) => write!(out, "{}", palisade_policy::yaml::to_yaml(&printable(&objects, &args.name)?))?,
        None if objects.is_empty() => match backend.namespace().filter(|_| !args.all_namespaces) {
            Some(namespace) => writeln!(out, "No resources found in {namespace} namespace.")?,
            None => writeln!(out, "No resources found.")?,
        },
        Some(Format::Wide) | None => {
            let rows: Vec<_> = objects.iter().map(|o| view.row(o, backend.now())).collect::<Result<_>>()?;
            table(&view.header::<K>(), &rows, out)?;
        }
    }
    Ok(())
}

/// How a listing is shown: with a NAMESPACE column or not, wide or not.
struct View {
    namespaces: bool,
    wide: bool,
}

impl View {
    fn new<K: Listed>(backend: &Backend, args: &GetArgs, objects: &[K]) -> View {
        // Local mode without --namespace lists every namespace, and says which once there are several.
        let namespaces = args.all_namespaces
            || backend.namespace().is_none() && objects.windows(2).any(|w| w[0].namespace() != w[1].namespace());
        View { namespaces, wide: args.output == Some(Format::Wide) }
    }

    /// NAME, then the CRD's printer columns (so that the two never disagree), then what `wide` adds.
    fn header<K: Listed>(&self) -> Vec<String> {
        let mut header: Vec<String> = Vec::new();
        if self.namespaces {
            header.push("NAMESPACE".into());
        }
        header.push("NAME".into());
        header.extend(printer_columns_of::<K>().iter().map(|c| c.name.to_uppercase()));
        if self.wide {
            header.extend(K::WIDE.iter().map(|c| c.to_string()));
        }
        header
    }

    fn row<K: Listed>(&self, object: &K, now: Timestamp) -> Result<Vec<String>> {
        let value = serde_json::to_value(object)?;
        let mut row = Vec::new();
        if self.namespaces {
            row.push(object.namespace().unwrap_or_default());
        }
        row.push(object.name_any());
        for column in printer_columns_of::<K>() {
            let cell = json_path(&value, &column.json_path);
            row.push(match (column.type_.as_str(), cell) {
                ("date", Some(Json::String(s))) => s.parse::<Timestamp>().map_or_else(|_| s.clone(), |t| age(now, t)),
                (_, Some(Json::String(s))) => s.clone(),
                (_, Some(Json::Null) | None) => String::new(),
                (_, Some(other)) => other.to_string(),
            });
        }
        if self.wide {
            row.extend(object.wide(now));
        }
        Ok(row)
    }
}

/// What `-o json|yaml` prints: the object for a name, else a `List`, without managedFields.
fn printable<K: Listed>(objects: &[K], name: &Option<String>) -> Result<Json> {
    let mut items = Vec::with_capacity(objects.len());
    for object in objects {
        items.push(printable_object(object)?);
    }
    if name.is_some()
        && let [item] = items.as_mut_slice()
    {
        return Ok(item.take());
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}))
}

fn printable_object<K: Listed>(object: &K) -> Result<Json> {
    let mut value = serde_json::to_value(object)?;
    if let Some(metadata) = value.get_mut("metadata").and_then(Json::as_object_mut) {
        metadata.remove("managedFields");
    }
    Ok(value)
}

/// The spaces after each column but the last, as kubectl pads them.
const PADDING: usize = 3;
/// The narrowest a column is (tabwriter's default).
const MIN_WIDTH: usize = 2;

/// kubectl's table; returns each column's width, for the rows a watch adds later.
fn table(header: &[String], rows: &[Vec<String>], out: &mut impl Write) -> Result<Vec<usize>> {
    let mut w = TabWriter::new(&mut *out).padding(PADDING).minwidth(MIN_WIDTH);
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        writeln!(w, "{}", row.join("\t"))?;
    }
    w.flush()?;
    let mut widths = vec![0; header.len()];
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count()).max(MIN_WIDTH);
        }
    }
    Ok(widths)
}

/// One more row, aligned with a table already printed (a wider cell pushes the rest of its row
/// right, as with kubectl).
fn line(widths: &[usize], row: &[String]) -> String {
    let mut text = String::new();
    for (i, cell) in row.iter().enumerate() {
        text.push_str(cell);
        if i + 1 < row.len() {
            let width = widths.get(i).copied().unwrap_or(MIN_WIDTH);
            let pad = width.saturating_sub(cell.chars().count()) + PADDING;
            text.extend(std::iter::repeat_n(' ', pad));
        }
    }
    text
}

/// `--watch`: the listing, then each change as it comes (a deletion shows the object's last
/// line), until interrupted. A change that does not change what is printed for the object (an
/// agent rewriting its report with the same figures) prints nothing.
async fn watch<K: Listed>(backend: &Backend, args: &GetArgs, out: &mut impl Write) -> Result<()> {
    let query =
        Query { name: args.name.as_deref(), all_namespaces: args.all_namespaces, selector: args.selector.as_deref() };
    let (objects, mut changes) = backend.list_and_watch::<K>(&query).await?;
    let started = Instant::now();
    let now = || backend.now() + SignedDuration::try_from(started.elapsed()).unwrap_or_default();
    let view = View::new(backend, args, &objects);
    let mut printer = Printer { header: view.header::<K>(), view, format: args.output, widths: None, first: true };
    // What was last printed for each object.
    let mut shown: HashMap<(String, String), String> = HashMap::new();
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    match args.output {
        Some(Format::Wide) | None if !objects.is_empty() => {
            let rows: Vec<_> = objects.iter().map(|o| printer.view.row(o, now())).collect::<Result<_>>()?;
            let widths = table(&printer.header, &rows, out)?;
            for (object, row) in objects.iter().zip(&rows) {
                shown.insert(key(object), format!("{}\n", line(&widths, row)));
            }
            printer.widths = Some(widths);
        }
        Some(Format::Wide) | None => match backend.namespace().filter(|_| !args.all_namespaces) {
            // As kubectl says it when watching: on stderr, the table follows with the first object.
            Some(namespace) => eprintln!("No resources found in {namespace} namespace."),
            None => eprintln!("No resources found."),
        },
        Some(Format::Json | Format::Yaml) => {
            for object in &objects {
                let (text, printed) = printer.text(object, now())?;
                write!(out, "{printed}")?;
                shown.insert(key(object), text);
            }
        }
    }
    out.flush()?;
    loop {
        let (object, deleted) = match changes.next().await? {
            Change::Applied(object) => (object, false),
            Change::Deleted(object) => (object, true),
        };
        let (text, printed) = printer.text(&object, now())?;
        if deleted || shown.get(&key(&object)) != Some(&text) {
            write!(out, "{printed}")?;
            out.flush()?;
        }
        match deleted {
            true => shown.remove(&key(&object)),
            false => shown.insert(key(&object), text),
        };
    }
}

/// How a watch prints one object at a time.
struct Printer {
    view: View,
    format: Option<Format>,
    header: Vec<String>,
    /// The table's column widths, once its header is printed.
    widths: Option<Vec<usize>>,
    /// No YAML document printed yet.
    first: bool,
}

impl Printer {
    /// What stands for the object (its row, or the object as JSON or YAML), and what to print
    /// for it: the same, with the table's header before the first row and `---` between YAML
    /// documents.
    fn text<K: Listed>(&mut self, object: &K, now: Timestamp) -> Result<(String, String)> {
        Ok(match self.format {
            Some(Format::Json) => {
                let text = format!("{}\n", serde_json::to_string_pretty(&printable_object(object)?)?);
                (text.clone(), text)
            }
            Some(Format::Yaml) => {
                let text = palisade_policy::yaml::to_yaml(&printable_object(object)?);
                let separator = if std::mem::take(&mut self.first) { "" } else { "---\n" };
                (text.clone(), format!("{separator}{text}"))
            }
            Some(Format::Wide) | None => {
                let row = self.view.row(object, now)?;
                match &self.widths {
                    Some(widths) => {
                        let text = format!("{}\n", line(widths, &row));
                        (text.clone(), text)
                    }
                    None => {
                        let mut widths = vec![MIN_WIDTH; self.header.len()];
                        for cells in [&self.header, &row] {
                            for (width, cell) in widths.iter_mut().zip(cells) {
                                *width = (*width).max(cell.chars().count());
                            }
                        }
                        let text = format!("{}\n", line(&widths, &row));
                        let printed = format!("{}\n{text}", line(&widths, &self.header));
                        self.widths = Some(widths);
                        (text, printed)
                    }
                }
            }
        })
    }
}
