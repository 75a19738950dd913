//! Local mode's stand-in for the API server: the same objects (PolicyRollout with its status,
//! PolicyRevisions, PolicyAuditReports, PolicyDecisions, Events) as JSON files under the state
//! directory, written atomically. The running `palisade local run` owns them; the CLI reads them,
//! creates PolicyDecisions (promote, abort, reaudit) and leaves requests (suspend, resume,
//! reconcile) for it to carry out, as it would patch a cluster.
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use palisade_rollout::crd::{PolicyAuditReport, PolicyDecision, PolicyRevision, PolicyRollout};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a CLI command asks of the running controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    Suspend(bool),
    Reconcile(Time),
}

/// An Event as `kubectl describe` lists them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalEvent {
    pub time: Time,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub namespace: String,
    pub rollout: String,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store inside local mode's state directory.
    pub fn new(state_dir: &Path) -> Store {
        Store { dir: state_dir.join("objects") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes every object and request, so that the next `local run` starts from scratch.
    /// Nothing to delete is no error.
    pub fn clear(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {}", self.dir.display()))
            }
            _ => Ok(()),
        }
    }

    fn path(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(kind).join(namespace).join(format!("{name}.json"))
    }

    pub fn rollouts(&self) -> Result<Vec<PolicyRollout>> {
        self.list("rollouts", None)
    }

    pub fn rollout(&self, namespace: &str, name: &str) -> Result<Option<PolicyRollout>> {
        read(&self.path("rollouts", namespace, name))
    }

    /// Finds a rollout by name alone when only one namespace has it (the CLI's default).
    pub fn find_rollout(&self, namespace: Option<&str>, name: &str) -> Result<Option<PolicyRollout>> {
        let mut found = self.rollouts()?.into_iter().filter(|r| {
            r.metadata.name.as_deref() == Some(name)
                && namespace.is_none_or(|ns| r.metadata.namespace.as_deref() == Some(ns))
        });
        let first = found.next();
        if first.is_some() && found.next().is_some() {
            anyhow::bail!("rollout {name} exists in several namespaces: say which with --namespace");
        }
        Ok(first)
    }

    pub fn put_rollout(&self, rollout: &PolicyRollout) -> Result<()> {
        let (namespace, name) = names(&rollout.metadata.namespace, &rollout.metadata.name)?;
        write(&self.path("rollouts", namespace, name), rollout)
    }

    pub fn revisions(&self, namespace: &str) -> Result<Vec<PolicyRevision>> {
        self.list("revisions", Some(namespace))
    }

    pub fn put_revision(&self, revision: &PolicyRevision) -> Result<()> {
        let (namespace, name) = names(&revision.metadata.namespace, &revision.metadata.name)?;
        write(&self.path("revisions", namespace, name), revision)
    }

    /// The revisions of every rollout in `namespace`, or in every namespace.
    pub fn all_revisions(&self, namespace: Option<&str>) -> Result<Vec<PolicyRevision>> {
        self.list("revisions", namespace)
    }

    /// The reports of every rollout in `namespace`, or in every namespace.
    pub fn all_reports(&self, namespace: Option<&str>) -> Result<Vec<PolicyAuditReport>> {
        self.list("reports", namespace)
    }

    /// The reports of one rollout, one per node.
    pub fn reports(&self, namespace: &str, rollout: &str) -> Result<Vec<PolicyAuditReport>> {
        let all: Vec<PolicyAuditReport> = self.list("reports", Some(namespace))?;
        Ok(all.into_iter().filter(|r| r.spec.rollout == rollout).collect())
    }

    pub fn put_report(&self, report: &PolicyAuditReport) -> Result<()> {
        let (namespace, name) = names(&report.metadata.namespace, &report.metadata.name)?;
        write(&self.path("reports", namespace, name), report)
    }

    /// The decisions about one rollout, oldest first.
    pub fn decisions(&self, namespace: &str, rollout: &str) -> Result<Vec<PolicyDecision>> {
        let mut all: Vec<PolicyDecision> = self.list("decisions", Some(namespace))?;
        all.retain(|d| d.spec.rollout == rollout);
        all.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name).cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        Ok(all)
    }

    pub fn put_decision(&self, decision: &PolicyDecision) -> Result<()> {
        let (namespace, name) = names(&decision.metadata.namespace, &decision.metadata.name)?;
        write(&self.path("decisions", namespace, name), decision)
    }

    /// Deletes a decision; one already gone is fine.
    pub fn remove_decision(&self, namespace: &str, name: &str) -> Result<()> {
        remove(&self.path("decisions", namespace, name))
    }

    pub fn events(&self, namespace: &str, rollout: &str) -> Result<Vec<LocalEvent>> {
        let text = match fs::read_to_string(self.dir.join("events.jsonl")) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("read the events"),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<LocalEvent>(line).ok())
            .filter(|e| e.namespace == namespace && e.rollout == rollout)
            .collect())
    }

    pub fn append_event(&self, event: &LocalEvent) -> Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| format!("create {}", self.dir.display()))?;
        let path = self.dir.join("events.jsonl");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(event)?).with_context(|| format!("write {}", path.display()))
    }

    /// Leaves a request for the running controller (one file each, so none is lost).
    pub fn push_request(&self, namespace: &str, rollout: &str, request: &Request) -> Result<()> {
        let dir = self.dir.join("requests").join(namespace).join(rollout);
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!("{:020}-{}", stamp.as_nanos(), std::process::id());
        write(&dir.join(format!("{name}.json")), request)
    }

    /// The pending requests of a rollout, oldest first, removed from the store.
    pub fn take_requests(&self, namespace: &str, rollout: &str) -> Result<Vec<Request>> {
        let dir = self.dir.join("requests").join(namespace).join(rollout);
        let mut requests = Vec::new();
        for path in json_files(&dir)? {
            if let Some(request) = read(&path)? {
                requests.push(request);
            }
            remove(&path)?;
        }
        Ok(requests)
    }

    fn list<T: DeserializeOwned>(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<T>> {
        let base = self.dir.join(kind);
        let namespaces = match namespace {
            Some(ns) => vec![base.join(ns)],
            None => subdirectories(&base)?,
        };
        let mut objects = Vec::new();
        for dir in namespaces {
            for path in json_files(&dir)? {
                objects.extend(read(&path)?);
            }
        }
        Ok(objects)
    }
}

fn names<'a>(namespace: &'a Option<String>, name: &'a Option<String>) -> Result<(&'a str, &'a str)> {
    match (namespace.as_deref(), name.as_deref()) {
        (Some(ns), Some(name)) => Ok((ns, name)),
        _ => anyhow::bail!("an object without a namespace or a name cannot be stored"),
    }
}

fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, |entry| entry.file_type().is_ok_and(|t| t.is_dir()))
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    entries(dir, |entry| entry.path().extension().is_some_and(|e| e == "json"))
}

/// The paths in `dir` of the entries `keep` keeps, sorted; none when `dir` does not exist.
fn entries(dir: &Path, keep: impl Fn(&fs::DirEntry) -> bool) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        if keep(&entry) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).with_context(|| format!("{}: not a valid object", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Written aside and renamed, so readers never see half a file.
fn write(path: &Path, value: &impl Serialize) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let temporary = path.with_extension("json.tmp");
    fs::write(&temporary, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("write {}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("remove {}", path.display())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_come_back_in_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.push_request("shop", "web", &Request::Suspend(true)).unwrap();
        store.push_request("shop", "web", &Request::Suspend(false)).unwrap();
        assert_eq!(store.take_requests("shop", "web").unwrap(), [Request::Suspend(true), Request::Suspend(false)]);
        assert!(store.take_requests("shop", "web").unwrap().is_empty());
    }

    #[test]
    fn clear_removes_everything_and_may_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.push_request("shop", "web", &Request::Suspend(true)).unwrap();
        assert!(store.dir().is_dir());
        store.clear().unwrap();
        assert!(!store.dir().exists());
        store.clear().unwrap();
        assert!(dir.path().is_dir(), "only the objects go");
    }
}
