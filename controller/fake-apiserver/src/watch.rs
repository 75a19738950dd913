//! Watches: every change kept as it happened, so a watch from resourceVersion N first replays
//! the events after N, then follows new ones; ADDED, MODIFIED and DELETED as the watch's
//! selector sees them (an object relabelled out of it is DELETED for that watch); BOOKMARK when
//! asked for; and 410 Gone for a resourceVersion expired by [`crate::FakeApi::expire`].

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::selector::Filter;

/// A change to one object.
struct Recorded {
    version: u64,
    collection: String,
    /// The object after the change (for a deletion: as it was deleted).
    object: Value,
    /// The object before the change; None on creation.
    before: Option<Value>,
    deleted: bool,
}

struct Watch {
    collection: String,
    filter: Filter,
    events: UnboundedSender<Bytes>,
}

/// What one watch asks for.
pub(crate) struct WatchRequest {
    pub collection: String,
    pub filter: Filter,
    /// `resourceVersion`: None or 0 starts with the current objects as ADDED events.
    pub since: Option<u64>,
    pub bookmarks: bool,
}

#[derive(Default)]
pub(crate) struct Watches {
    history: Vec<Recorded>,
    /// Per collection, the newest resourceVersion a watch can no longer start from.
    expired: HashMap<String, u64>,
    open: Vec<Watch>,
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("an event serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// The event a watch with `filter` sees of `change`, if any.
fn event(change: &Recorded, filter: &Filter) -> Option<Value> {
    let now = !change.deleted && filter.matches(&change.object);
    let was = if change.deleted {
        filter.matches(&change.object)
    } else {
        change.before.as_ref().is_some_and(|b| filter.matches(b))
    };
    let kind = match (was, now) {
        (false, true) => "ADDED",
        (true, true) => "MODIFIED",
        (true, false) => "DELETED",
        (false, false) => return None,
    };
    Some(json!({"type": kind, "object": change.object}))
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})
}

/// The apiVersion of a collection's objects: `v1` of `api/v1/pods`, `g/v` of `apis/g/v/plural`.
fn api_version(collection: &str) -> String {
    let parts: Vec<&str> = collection.split('/').collect();
    parts[1..parts.len() - 1].join("/")
}

impl Watches {
    /// A creation or change, sent to the open watches it concerns.
    pub(crate) fn record(&mut self, version: u64, collection: &str, object: &Value, before: Option<&Value>) {
        self.push(Recorded {
            version,
            collection: collection.into(),
            object: object.clone(),
            before: before.cloned(),
            deleted: false,
        });
    }

    pub(crate) fn record_deletion(&mut self, version: u64, collection: &str, object: &Value) {
        self.push(Recorded {
            version,
            collection: collection.into(),
            object: object.clone(),
            before: None,
            deleted: true,
        });
    }

    fn push(&mut self, change: Recorded) {
        self.open.retain(|w| {
            w.collection != change.collection
                || event(&change, &w.filter).is_none_or(|e| w.events.send(line(&e)).is_ok())
        });
        self.history.push(change);
    }

    /// Ends the watches of `collection` with 410 Gone; watches from before `version` get the
    /// same at once.
    pub(crate) fn expire(&mut self, collection: &str, version: u64) {
        self.expired.insert(collection.into(), version);
        self.history.retain(|c| c.collection != collection);
        self.open.retain(|w| {
            let _ = (w.collection == collection).then(|| w.events.send(line(&gone())));
            w.collection != collection
        });
    }

    /// Opens a watch: its first events (the current objects, or the changes since the asked
    /// resourceVersion, then a bookmark at `version` if asked for), then every new one.
    pub(crate) fn open<'a>(
        &mut self,
        request: WatchRequest,
        current: impl Iterator<Item = &'a Value>,
        version: u64,
    ) -> UnboundedReceiver<Bytes> {
        let (events, receiver) = unbounded_channel();
        let send = |event: &Value| {
            let _ = events.send(line(event));
        };
        match request.since.filter(|v| *v > 0) {
            Some(since) if self.expired.get(&request.collection).is_some_and(|e| since < *e) => {
                send(&gone());
                return receiver;
            }
            Some(since) => self
                .history
                .iter()
                .filter(|c| c.version > since && c.collection == request.collection)
                .filter_map(|c| event(c, &request.filter))
                .for_each(|e| send(&e)),
            None => {
                current.filter(|o| request.filter.matches(o)).for_each(|o| send(&json!({"type": "ADDED", "object": o})))
            }
        }
        if request.bookmarks {
            let kind = current_kind(&self.history, &request.collection);
            send(&json!({"type": "BOOKMARK", "object": {"apiVersion": api_version(&request.collection),
                "kind": kind, "metadata": {"resourceVersion": version.to_string()}}}));
        }
        self.open.push(Watch { collection: request.collection, filter: request.filter, events });
        receiver
    }
}

/// The kind of a collection's objects, as far as the history shows it.
fn current_kind(history: &[Recorded], collection: &str) -> String {
    history
        .iter()
        .find(|c| c.collection == collection)
        .and_then(|c| c.object["kind"].as_str())
        .unwrap_or_default()
        .to_string()
}
