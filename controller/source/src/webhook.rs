//! The push webhook receiver. A request triggers a sync only when it is authenticated (HMAC over
//! the body, or GitLab's shared token, compared in constant time), is a push, fits the body limit
//! and is not a delivery or commit already seen. Nothing is parsed or remembered before the
//! request is authenticated.
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// GitHub push payloads are far below this; anything larger is refused before it is read whole.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Deliveries and commits remembered for de-duplication.
const REMEMBERED: usize = 1024;

pub enum Provider {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, events in `X-GitHub-Event`.
    GitHub { secret: Vec<u8> },
    /// `X-Gitlab-Token: <token>`, events in `X-Gitlab-Event`.
    GitLab { token: Vec<u8> },
    /// `X-Signature: sha256=<hex HMAC-SHA256 of the body>`; every request is a push.
    Generic { secret: Vec<u8> },
}

/// What the receiver asks the source to do: sync now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    pub delivery: Option<String>,
    /// The pushed commit, when the payload names it.
    pub commit: Option<String>,
    /// The pushed ref, e.g. `refs/heads/main`.
    pub reference: Option<String>,
}

pub struct Receiver {
    provider: Provider,
    max_body: usize,
    trigger: mpsc::Sender<SyncRequest>,
    seen: Mutex<Seen>,
}

impl Receiver {
    pub fn new(provider: Provider, trigger: mpsc::Sender<SyncRequest>) -> Self {
        Receiver { provider, max_body: DEFAULT_MAX_BODY, trigger, seen: Mutex::new(Seen::default()) }
    }

    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// A router serving POST requests at `path`. Make `path` hard to guess (Flux derives it from
    /// a token), so scanners do not even reach the signature check.
    pub fn router(self, path: &str) -> Router {
        Router::new().route(path, post(handle)).with_state(Arc::new(self))
    }

    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        match &self.provider {
            Provider::GitHub { secret } => verify_hmac(secret, header(headers, "x-hub-signature-256"), body),
            Provider::Generic { secret } => verify_hmac(secret, header(headers, "x-signature"), body),
            Provider::GitLab { token } => header(headers, "x-gitlab-token").is_some_and(|given| {
                // Hash both so the comparison takes the same time whatever the lengths.
                Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(token)).into()
            }),
        }
    }

    /// `Ok(true)` for a push, `Ok(false)` for a ping, `Err` with the event name otherwise.
    fn is_push(&self, headers: &HeaderMap) -> Result<bool, String> {
        let event = match &self.provider {
            Provider::GitHub { .. } => header(headers, "x-github-event"),
            Provider::GitLab { .. } => header(headers, "x-gitlab-event"),
            Provider::Generic { .. } => return Ok(true),
        };
        match event {
            Some("push" | "Push Hook" | "Tag Push Hook") => Ok(true),
            Some("ping") => Ok(false),
            other => Err(other.unwrap_or("(none)").to_string()),
        }
    }

    fn delivery(&self, headers: &HeaderMap) -> Option<String> {
        let name = match &self.provider {
            Provider::GitHub { .. } => "x-github-delivery",
            Provider::GitLab { .. } => "x-gitlab-event-uuid",
            Provider::Generic { .. } => "x-delivery-id",
        };
        header(headers, name).map(str::to_string)
    }
}

async fn handle(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> (StatusCode, String) {
    let limit = receiver.max_body;
    let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes\n"));
    if header(&headers, "content-length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > limit) {
        return too_large();
    }
    // Also bounds chunked bodies that announce no length.
    let Ok(body) = axum::body::to_bytes(body, limit).await else { return too_large() };
    if !receiver.authenticate(&headers, &body) {
        warn!("webhook: refused a request with a missing or wrong signature");
        return (StatusCode::UNAUTHORIZED, "signature does not match\n".into());
    }
    match receiver.is_push(&headers) {
        Ok(true) => {}
        Ok(false) => return (StatusCode::OK, "pong\n".into()),
        Err(event) => return (StatusCode::BAD_REQUEST, format!("event {event} is not handled; only push and ping\n")),
    }
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |key: &str| payload.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let request = SyncRequest {
        delivery: receiver.delivery(&headers),
        commit: text("checkout_sha").or_else(|| text("after")),
        reference: text("ref"),
    };
    let fresh = {
        let mut seen = receiver.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.insert(request.delivery.as_deref(), request.commit.as_deref())
    };
    if !fresh {
        debug!(delivery = ?request.delivery, commit = ?request.commit, "webhook: duplicate");
        return (StatusCode::OK, "duplicate\n".into());
    }
    match receiver.trigger.try_send(request.clone()) {
        // A full queue means a sync is already pending, and it will see this push too.
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {
            info!(delivery = ?request.delivery, commit = ?request.commit, "webhook: sync triggered");
            (StatusCode::ACCEPTED, "sync triggered\n".into())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => (StatusCode::SERVICE_UNAVAILABLE, "not syncing\n".into()),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `sha256=<hex>` checked with `verify_slice`, which compares in constant time.
fn verify_hmac(secret: &[u8], signature: Option<&str>, body: &[u8]) -> bool {
    let Some(expected) = signature.and_then(|s| s.strip_prefix("sha256=")).and_then(|h| hex::decode(h).ok()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Recently seen delivery ids and commits, oldest forgotten first.
#[derive(Default)]
struct Seen {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// False when the delivery or the commit was seen before; remembers both otherwise.
    fn insert(&mut self, delivery: Option<&str>, commit: Option<&str>) -> bool {
        let keys: Vec<String> = [delivery.map(|d| format!("delivery:{d}")), commit.map(|c| format!("commit:{c}"))]
            .into_iter()
            .flatten()
            .collect();
        if keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        for key in keys {
            if self.order.len() == REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
            self.keys.insert(key.clone());
            self.order.push_back(key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_needs_the_prefix_and_the_right_secret() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verify_hmac(b"s3cret", Some(&good), b"{}"));
        assert!(!verify_hmac(b"other", Some(&good), b"{}"));
        assert!(!verify_hmac(b"s3cret", Some(&good[7..]), b"{}"));
        assert!(!verify_hmac(b"s3cret", None, b"{}"));
    }

    #[test]
    fn seen_forgets_the_oldest() {
        let mut seen = Seen::default();
        assert!(seen.insert(Some("d0"), Some("c0")));
        assert!(!seen.insert(Some("d0"), None));
        assert!(!seen.insert(Some("other"), Some("c0")));
        for i in 1..=REMEMBERED {
            assert!(seen.insert(Some(&format!("d{i}")), None));
        }
        assert!(seen.insert(Some("d0"), None));
    }
}
