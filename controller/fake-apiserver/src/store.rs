//! The objects, one resourceVersion counter across all of them, and every change as the event a
//! watch sees: what the API server keeps in etcd, and the writes it makes there (creation,
//! replacement, patches, deletion with finalizers and the garbage collector's cascade).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::fields::{self, Owners};
use crate::watch::{WatchRequest, Watches};

/// (collection, namespace, name); collection is e.g. `apis/palisade.dev/v1alpha1/policyrollouts`,
/// namespace empty for cluster-scoped objects.
pub(crate) type Key = (String, String, String);

/// A write the API server refuses, as the HTTP status and Status reason it answers with.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { code, reason, message: message.into() }
    }

    pub(crate) fn not_found(key: &Key) -> Refusal {
        Refusal::new(404, "NotFound", format!("{} \"{}\" not found", resource(&key.0), key.2))
    }

    fn stale(key: &Key) -> Refusal {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to \
             the latest version and try again",
            resource(&key.0),
            key.2
        );
        Refusal::new(409, "Conflict", message)
    }
}

/// `policyrollouts.palisade.dev` of `apis/palisade.dev/v1alpha1/policyrollouts`, `pods` of
/// `api/v1/pods`: how the API server names a resource in its messages.
pub(crate) fn resource(collection: &str) -> String {
    match collection.split('/').collect::<Vec<_>>().as_slice() {
        ["apis", group, _, plural] => format!("{plural}.{group}"),
        parts => parts.last().copied().unwrap_or_default().to_string(),
    }
}

#[derive(Default)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    owners: HashMap<Key, Owners>,
    /// The last resourceVersion given out.
    pub version: u64,
    pub watches: Watches,
}

impl Store {
    pub(crate) fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of `collection` in key order (namespace, name), as etcd lists them.
    pub(crate) fn objects<'a>(&'a self, collection: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |((c, _, _), _)| c == collection).map(|(_, v)| v)
    }

    /// Opens a watch at the current version; one without a version starts with the current
    /// objects, read in place.
    pub(crate) fn watch(&mut self, request: WatchRequest) -> UnboundedReceiver<Bytes> {
        let collection = request.collection.clone();
        let current = self.objects.iter().filter(move |((c, _, _), _)| *c == collection).map(|(_, v)| v);
        self.watches.open(request, current, self.version)
    }

    /// Stores `object` under `key` as a write by `manager` (`owners` given: an apply that already
    /// settled the field owners). The server's metadata is set: a new resourceVersion; on
    /// creation a uid, generation 1 and a creationTimestamp (unless given) one second later per
    /// write, so "newest" is well defined; afterwards the uid, creation time and deletion mark
    /// stay, and the generation counts spec changes. A deleted object whose last finalizer is
    /// gone is removed. `seen`: whether watches get the event.
    pub(crate) fn write(
        &mut self,
        key: &Key,
        mut object: Value,
        manager: &str,
        owners: Option<Owners>,
        seen: bool,
    ) -> Value {
        let old = self.objects.get(key).cloned();
        match owners {
            Some(owners) => {
                self.owners.insert(key.clone(), owners);
            }
            None => {
                let before = old.clone().unwrap_or(Value::Null);
                fields::update(self.owners.entry(key.clone()).or_default(), &before, &object, manager);
            }
        }
        self.version += 1;
        let version = self.version;
        let spec_changed = old.as_ref().is_some_and(|old| object.get("spec") != old.get("spec"));
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if !key.1.is_empty() {
            meta["namespace"] = json!(key.1);
        }
        meta["resourceVersion"] = json!(version.to_string());
        match &old {
            None => {
                meta["uid"] = json!(format!("uid-{version}"));
                meta["generation"] = json!(1);
                if meta["creationTimestamp"].is_null() {
                    let time = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + version as i64).unwrap();
                    meta["creationTimestamp"] = json!(time.to_string());
                }
            }
            Some(old) => {
                for kept in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    if !old["metadata"][kept].is_null() {
                        meta[kept] = old["metadata"][kept].clone();
                    }
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                meta["generation"] = json!(generation + i64::from(spec_changed));
            }
        }
        let finished = !object["metadata"]["deletionTimestamp"].is_null()
            && object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if finished {
            self.objects.insert(key.clone(), object.clone());
            self.remove(key, seen);
            return object;
        }
        self.objects.insert(key.clone(), object.clone());
        if seen {
            self.watches.record(version, &key.0, &object, old.as_ref());
        }
        object
    }

    /// Deletes like the API server: an object with finalizers gets a deletionTimestamp and stays
    /// until they are removed; any other goes at once, with what it owns.
    pub(crate) fn delete(&mut self, key: &Key, seen: bool) -> Result<Value, Refusal> {
        let object = self.objects.get(key).cloned().ok_or_else(|| Refusal::not_found(key))?;
        if object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            if !object["metadata"]["deletionTimestamp"].is_null() {
                return Ok(object);
            }
            let mut marked = object;
            marked["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
            return Ok(self.write(key, marked, "", self.owners.get(key).cloned(), seen));
        }
        Ok(self.remove(key, seen))
    }

    /// Removes an object and, like the garbage collector, deletes every object it owns.
    fn remove(&mut self, key: &Key, seen: bool) -> Value {
        let mut object = self.objects.remove(key).expect("an object to remove");
        self.owners.remove(key);
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        if seen {
            self.watches.record_deletion(self.version, &key.0, &object);
        }
        let uid = object["metadata"]["uid"].clone();
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| v["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|o| o["uid"] == uid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            let _ = self.delete(&key, seen);
        }
        object
    }

    pub(crate) fn owners(&self, key: &Key) -> Owners {
        self.owners.get(key).cloned().unwrap_or_default()
    }

    /// 409 unless `given` (a resourceVersion a write was based on) is absent or current.
    pub(crate) fn precondition(&self, key: &Key, given: &Value) -> Result<(), Refusal> {
        let current = self.objects.get(key).map(|o| &o["metadata"]["resourceVersion"]);
        match given.as_str() {
            Some(version) if current.and_then(Value::as_str) != Some(version) => Err(Refusal::stale(key)),
            _ => Ok(()),
        }
    }
}
