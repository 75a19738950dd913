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
use serde_json::Value;
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
    /// `X-Signature: sha256=<hex HMAC-SHA256 of the body>`; every request is a push. The body is
    /// JSON with `ref`, `after` (or `checkout_sha`) and optionally `repository`: a URL, or an
    /// object with a `url`; all optional.
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
    /// URLs of the pushed repository as the payload names them (clone, SSH, web); empty when it
    /// names none, and then the push may be of any repository.
    pub repositories: Vec<String>,
}

impl SyncRequest {
    /// Whether this may be a push to the repository at `url`: one of the payload's URLs names the
    /// same repository (see [`normalize_repository_url`]), or the payload names none.
    pub fn names_repository(&self, url: &str) -> bool {
        if self.repositories.is_empty() {
            return true;
        }
        let wanted = normalize_repository_url(url);
        self.repositories.iter().any(|r| normalize_repository_url(r) == wanted)
    }

    /// What makes two pushes the same: the commit, the ref and the repository. A commit pushed
    /// to another ref (a tag on a branch's head) or to another repository (a fork) is news.
    fn push_key(&self) -> Option<String> {
        let commit = self.commit.as_deref()?;
        let repository = self.repositories.first().map(|r| normalize_repository_url(r));
        Some(format!("{commit} {} {}", self.reference.as_deref().unwrap_or_default(), repository.unwrap_or_default()))
    }
}

/// Parses a push payload (GitHub, GitLab or generic); fields it lacks stay unknown.
fn sync_request(payload: &Value, delivery: Option<String>) -> SyncRequest {
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_string);
    SyncRequest {
        delivery,
        commit: text("checkout_sha").or_else(|| text("after")),
        reference: text("ref"),
        repositories: repository_urls(payload),
    }
}

/// The URLs of the pushed repository a payload names, in the order found, without duplicates.
fn repository_urls(payload: &Value) -> Vec<String> {
    // GitHub: `repository.{clone_url,ssh_url,git_url,html_url,url}`. GitLab: `project.*` and the
    // older `repository.{url,git_http_url,git_ssh_url,homepage}`. Generic: `repository.url`.
    const FIELDS: [(&str, &[&str]); 2] = [
        (
            "repository",
            &["clone_url", "ssh_url", "git_url", "html_url", "url", "git_http_url", "git_ssh_url", "homepage"],
        ),
        ("project", &["git_http_url", "git_ssh_url", "http_url", "ssh_url", "web_url", "url", "homepage"]),
    ];
    // Generic: `"repository": "<url>"`.
    let bare = payload.get("repository").and_then(Value::as_str);
    let named = FIELDS
        .iter()
        .flat_map(|(object, keys)| keys.iter().filter_map(move |key| payload.get(object)?.get(key)?.as_str()));
    let mut urls: Vec<String> = Vec::new();
    for url in bare.into_iter().chain(named).map(str::trim) {
        if !url.is_empty() && !urls.iter().any(|u| u == url) {
            urls.push(url.to_string());
        }
    }
    urls
}

/// The form in which URLs of one repository compare equal: `host/path`, with the scheme, the
/// `user@` and the port dropped, the host lowercased, and leading and trailing `/` and a trailing
/// `.git` dropped from the path. So `git@github.com:acme/policies.git` (scp-like),
/// `ssh://git@github.com:22/acme/policies`, `https://github.com/acme/policies.git` and
/// `git://github.com/acme/policies` are all `github.com/acme/policies`. The path keeps its case:
/// hosts differ on whether it matters. Plain paths and `file://` URLs become `/path`.
pub fn normalize_repository_url(url: &str) -> String {
    let url = url.trim();
    let (authority, path) = match url.split_once("://") {
        Some((_scheme, rest)) => rest.split_once('/').unwrap_or((rest, "")),
        None => scp_like(url).unwrap_or(("", url)),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_user, host)| host);
    let host = match host.strip_prefix('[') {
        // `[::1]:22`
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(address, _port)| address),
        None => host.split_once(':').map_or(host, |(name, _port)| name),
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/');
    format!("{}/{path}", host.to_ascii_lowercase())
}

/// git's scp-like syntax, `[user@]host:path`: no `://` and a `:` before any `/` (outside the
/// brackets of an IPv6 address). Returns the `[user@]host` and the path.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let mut bracketed = false;
    for (i, c) in url.char_indices() {
        match c {
            '[' => bracketed = true,
            ']' => bracketed = false,
            '/' => return None,
            ':' if !bracketed => return Some((&url[..i], &url[i + 1..])),
            _ => {}
        }
    }
    None
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
    let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
    let request = sync_request(&payload, receiver.delivery(&headers));
    let fresh = {
        let mut seen = receiver.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.insert(request.delivery.as_deref(), request.push_key().as_deref())
    };
    if !fresh {
        debug!(delivery = ?request.delivery, commit = ?request.commit, "webhook: duplicate");
        return (StatusCode::OK, "duplicate\n".into());
    }
    match receiver.trigger.try_send(request.clone()) {
        // A full queue means a sync is already pending, and it will see this push too.
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {
            info!(
                delivery = ?request.delivery, commit = ?request.commit, reference = ?request.reference,
                repository = ?request.repositories.first(), "webhook: sync triggered"
            );
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
    /// False when the delivery or the push (commit, ref and repository: [`SyncRequest::push_key`])
    /// was seen before; remembers both otherwise.
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

    /// What a push payload must say: its ref and commit, the repository URLs it names, URLs
    /// that name the same repository and URLs that do not.
    struct Push {
        reference: &'static str,
        commit: &'static str,
        repositories: &'static [&'static str],
        names: &'static [&'static str],
        others: &'static [&'static str],
    }

    impl Push {
        fn check(&self, request: &SyncRequest) {
            assert_eq!(request.reference.as_deref(), Some(self.reference));
            assert_eq!(request.commit.as_deref(), Some(self.commit));
            assert_eq!(request.repositories, self.repositories);
            for url in self.names {
                assert!(request.names_repository(url), "{url} names the repository");
            }
            for url in self.others {
                assert!(!request.names_repository(url), "{url} is another repository");
            }
        }
    }

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

    #[test]
    fn urls_of_one_repository_normalize_alike() {
        let same = [
            (
                "github.com/acme/policies",
                &[
                    "https://github.com/acme/policies",
                    "https://github.com/acme/policies.git",
                    "https://github.com/acme/policies/",
                    "https://github.com/acme/policies.git/",
                    "http://GitHub.COM/acme/policies",
                    "https://x-access-token:ghp_abc@github.com/acme/policies.git",
                    "ssh://git@github.com/acme/policies.git",
                    "ssh://git@github.com:22/acme/policies",
                    "git://github.com/acme/policies.git",
                    "git@github.com:acme/policies.git",
                    "git@github.com:/acme/policies",
                    "github.com:acme/policies",
                    "  https://github.com/acme/policies\n",
                ][..],
            ),
            (
                "gitlab.example.com/platform/net/policies",
                &[
                    "https://gitlab.example.com:8443/platform/net/policies.git",
                    "ssh://git@gitlab.example.com:2222/platform/net/policies.git",
                    "git@gitlab.example.com:platform/net/policies.git",
                ][..],
            ),
            ("::1/srv/policies", &["ssh://git@[::1]:2222/srv/policies.git", "git@[::1]:srv/policies"][..]),
            ("/srv/git/policies", &["file:///srv/git/policies.git", "/srv/git/policies.git", "/srv/git/policies/"][..]),
        ];
        for (normal, urls) in same {
            for url in urls {
                assert_eq!(normalize_repository_url(url), normal, "{url}");
            }
        }
        let different = [
            ("https://github.com/acme/policies", "https://github.com/acme/policies-staging"),
            ("https://github.com/acme/policies", "https://github.com/other/policies"),
            ("https://github.com/acme/policies", "https://gitlab.com/acme/policies"),
            ("https://github.com/acme/policies", "https://github.com/Acme/Policies"),
            ("git@github.com:acme/policies.git", "git@github.com:acme/policies.github"),
            ("https://github.com/acme/policies", "https://github.com/acme/policies/tree/main"),
            ("https://github.com/acme/policies", "file:///acme/policies"),
        ];
        for (a, b) in different {
            assert_ne!(normalize_repository_url(a), normalize_repository_url(b), "{a} vs {b}");
        }
    }

    fn parse(payload: Value) -> SyncRequest {
        sync_request(&payload, None)
    }

    #[test]
    fn github_push_names_its_repository() {
        // Excerpt of a GitHub push payload.
        let request = parse(serde_json::json!({
            "ref": "refs/heads/main",
            "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "after": "0000000000000000000000000000000000000000",
            "repository": {
                "id": 186853002,
                "name": "Hello-World",
                "full_name": "Codertocat/Hello-World",
                "html_url": "https://github.com/Codertocat/Hello-World",
                "url": "https://github.com/Codertocat/Hello-World",
                "git_url": "git://github.com/Codertocat/Hello-World.git",
                "ssh_url": "git@github.com:Codertocat/Hello-World.git",
                "clone_url": "https://github.com/Codertocat/Hello-World.git",
                "svn_url": "https://github.com/Codertocat/Hello-World",
                "default_branch": "main"
            },
            "pusher": {"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com"},
            "created": false,
            "deleted": true,
            "forced": false
        }));
        let expected = Push {
            reference: "refs/heads/main",
            commit: "0000000000000000000000000000000000000000",
            repositories: &[
                "https://github.com/Codertocat/Hello-World.git",
                "git@github.com:Codertocat/Hello-World.git",
                "git://github.com/Codertocat/Hello-World.git",
                "https://github.com/Codertocat/Hello-World",
            ],
            names: &["https://github.com/Codertocat/Hello-World", "ssh://git@github.com/Codertocat/Hello-World.git"],
            others: &["https://github.com/Codertocat/Spoon-Knife", "https://github.example.com/Codertocat/Hello-World"],
        };
        expected.check(&request);
    }

    #[test]
    fn gitlab_push_names_its_project() {
        // Excerpt of a GitLab "Push Hook" payload.
        let request = parse(serde_json::json!({
            "object_kind": "push",
            "event_name": "push",
            "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
            "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "ref": "refs/heads/master",
            "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "user_username": "jsmith",
            "project_id": 15,
            "project": {
                "id": 15,
                "name": "Diaspora",
                "web_url": "http://example.com/mike/diaspora",
                "git_ssh_url": "git@example.com:mike/diaspora.git",
                "git_http_url": "http://example.com/mike/diaspora.git",
                "namespace": "Mike",
                "path_with_namespace": "mike/diaspora",
                "default_branch": "master",
                "homepage": "http://example.com/mike/diaspora",
                "url": "git@example.com:mike/diaspora.git",
                "ssh_url": "git@example.com:mike/diaspora.git",
                "http_url": "http://example.com/mike/diaspora.git"
            },
            "repository": {
                "name": "Diaspora",
                "url": "git@example.com:mike/diaspora.git",
                "description": "",
                "homepage": "http://example.com/mike/diaspora",
                "git_http_url": "http://example.com/mike/diaspora.git",
                "git_ssh_url": "git@example.com:mike/diaspora.git",
                "visibility_level": 0
            },
            "total_commits_count": 4
        }));
        let expected = Push {
            reference: "refs/heads/master",
            commit: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            repositories: &[
                "git@example.com:mike/diaspora.git",
                "http://example.com/mike/diaspora.git",
                "http://example.com/mike/diaspora",
            ],
            names: &["https://example.com/mike/diaspora.git", "ssh://git@example.com/mike/diaspora"],
            others: &["https://example.com/mike/diaspora-fork.git"],
        };
        expected.check(&request);
    }

    #[test]
    fn generic_push_may_name_a_repository() {
        let url = parse(serde_json::json!({"ref": "refs/heads/main", "repository": "https://git.example.com/acme/p"}));
        assert_eq!(url.repositories, ["https://git.example.com/acme/p"]);
        let object = parse(
            serde_json::json!({"ref": "refs/heads/main", "repository": {"url": "https://git.example.com/acme/p"}}),
        );
        assert_eq!(object.repositories, url.repositories);
        assert!(object.names_repository("ssh://git@git.example.com/acme/p.git"));
        assert!(!object.names_repository("ssh://git@git.example.com/acme/q.git"));

        // Naming none, or nothing usable, leaves the repository unknown: any repository may match.
        for payload in [
            serde_json::json!({"ref": "refs/heads/main", "after": "1".repeat(40)}),
            serde_json::json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/p", "url": ""}}),
            serde_json::json!({"repository": null}),
            serde_json::json!("not an object"),
            Value::Null,
        ] {
            let request = parse(payload);
            assert!(request.repositories.is_empty());
            assert!(request.names_repository("https://anything.example.com/x/y"));
        }
    }

    #[test]
    fn a_push_is_the_commit_on_a_ref_of_a_repository() {
        let push = |reference: &str, repository: &str| {
            parse(
                serde_json::json!({"ref": reference, "after": "a".repeat(40), "repository": {"clone_url": repository}}),
            )
            .push_key()
        };
        let main = push("refs/heads/main", "https://github.com/acme/p.git");
        assert_eq!(main, push("refs/heads/main", "git@github.com:acme/p.git"));
        assert_ne!(main, push("refs/tags/v1.0.0", "https://github.com/acme/p.git"));
        assert_ne!(main, push("refs/heads/main", "https://github.com/fork/p.git"));
        assert_eq!(parse(serde_json::json!({"ref": "refs/heads/main"})).push_key(), None);
    }
}
