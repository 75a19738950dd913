//! The webhook receiver over a real socket on 127.0.0.1: authenticated pushes trigger one sync
//! each; bad signatures, replays, other events and oversized bodies trigger nothing.
use hmac::{Hmac, Mac};
use palisade_source::webhook::{Provider, Receiver, SyncRequest};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PATH: &str = "/hook/5f2b1c";

async fn serve(provider: Provider, max_body: usize) -> (String, mpsc::Receiver<SyncRequest>) {
    let (tx, rx) = mpsc::channel(16);
    let router = Receiver::new(provider, tx).with_max_body(max_body).router(PATH);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (address, rx)
}

/// Sends one request; returns the status code.
async fn post(address: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut request =
        format!("POST {PATH} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (413) before reading the whole body and close; that is fine.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn push(commit: &str) -> Vec<u8> {
    format!(r#"{{"ref":"refs/heads/main","after":"{commit}","repository":{{"full_name":"acme/policies"}}}}"#)
        .into_bytes()
}

#[tokio::test]
async fn github_signatures_events_replays_and_size() {
    let secret = b"webhook-secret".to_vec();
    let (address, mut syncs) = serve(Provider::GitHub { secret: secret.clone() }, 4096).await;
    let github = |event: &str, delivery: &str, signature: String| {
        vec![
            ("X-GitHub-Event", event.to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", signature),
        ]
    };
    let body = push("1111111111111111111111111111111111111111");

    assert_eq!(post(&address, &github("push", "d1", sign(&secret, &body)), &body).await, 202);
    let request = syncs.try_recv().expect("one sync");
    assert_eq!(request.commit.as_deref(), Some("1111111111111111111111111111111111111111"));
    assert_eq!(request.reference.as_deref(), Some("refs/heads/main"));
    assert_eq!(request.delivery.as_deref(), Some("d1"));

    // Replays: the same delivery, or the same commit under another delivery id.
    assert_eq!(post(&address, &github("push", "d1", sign(&secret, &body)), &body).await, 200);
    assert_eq!(post(&address, &github("push", "d2", sign(&secret, &body)), &body).await, 200);

    // Wrong secret, a signature of other content, no signature, a bare hex digest.
    assert_eq!(post(&address, &github("push", "d3", sign(b"guess", &body)), &body).await, 401);
    let other = push("2222222222222222222222222222222222222222");
    assert_eq!(post(&address, &github("push", "d4", sign(&secret, &body)), &other).await, 401);
    assert_eq!(post(&address, &[("X-GitHub-Event", "push".into())], &other).await, 401);
    assert_eq!(post(&address, &github("push", "d5", sign(&secret, &other)[7..].to_string()), &other).await, 401);
    // Unauthenticated requests are not remembered either: the real push still goes through.
    assert_eq!(post(&address, &github("push", "d3", sign(&secret, &other)), &other).await, 202);
    assert_eq!(syncs.try_recv().unwrap().commit.as_deref(), Some("2222222222222222222222222222222222222222"));

    // Ping answers without a sync; other events are refused.
    assert_eq!(post(&address, &github("ping", "d6", sign(&secret, b"{}")), b"{}").await, 200);
    assert_eq!(post(&address, &github("issues", "d7", sign(&secret, b"{}")), b"{}").await, 400);

    // Oversized, even when correctly signed.
    let big = vec![b' '; 4097];
    assert_eq!(post(&address, &github("push", "d8", sign(&secret, &big)), &big).await, 413);

    assert!(syncs.try_recv().is_err(), "nothing else triggered a sync");
}

/// A GitHub push payload (excerpt) of `commit` to `reference` of `owner/repo`.
fn github_push(reference: &str, commit: &str, repository: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": reference,
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": commit,
        "repository": {
            "name": repository.rsplit('/').next(),
            "full_name": repository,
            "private": true,
            "html_url": format!("https://github.com/{repository}"),
            "url": format!("https://github.com/{repository}"),
            "git_url": format!("git://github.com/{repository}.git"),
            "ssh_url": format!("git@github.com:{repository}.git"),
            "clone_url": format!("https://github.com/{repository}.git"),
            "default_branch": "main"
        },
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "created": false,
        "deleted": false,
        "forced": false,
        "head_commit": {"id": commit, "message": "Allow ingress from monitoring"}
    }))
    .unwrap()
}

/// The request lists `repositories`, names the repository at `same` and not the one at `other`.
fn assert_names(request: &SyncRequest, repositories: &[&str], same: &str, other: &str) {
    assert_eq!(request.repositories, repositories);
    assert!(request.names_repository(same), "{same}");
    assert!(!request.names_repository(other), "{other}");
}

#[tokio::test]
async fn github_pushes_name_their_repository() {
    let secret = b"webhook-secret".to_vec();
    let (address, mut syncs) = serve(Provider::GitHub { secret: secret.clone() }, 1 << 16).await;
    let send = |delivery: &str, body: &[u8]| {
        let headers = vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", sign(&secret, body)),
        ];
        let address = address.clone();
        let body = body.to_vec();
        async move { post(&address, &headers, &body).await }
    };
    let commit = "4444444444444444444444444444444444444444";

    assert_eq!(send("r1", &github_push("refs/heads/main", commit, "acme/policies")).await, 202);
    let request = syncs.try_recv().unwrap();
    assert_eq!(request.reference.as_deref(), Some("refs/heads/main"));
    let repositories = [
        "https://github.com/acme/policies.git",
        "git@github.com:acme/policies.git",
        "git://github.com/acme/policies.git",
        "https://github.com/acme/policies",
    ];
    assert_names(
        &request,
        &repositories,
        "ssh://git@github.com/acme/policies.git",
        "https://github.com/acme/policies-staging.git",
    );

    // The same push again is a duplicate; the same commit tagged, or pushed to a fork, is news.
    assert_eq!(send("r2", &github_push("refs/heads/main", commit, "acme/policies")).await, 200);
    assert_eq!(send("r3", &github_push("refs/tags/v1.4.0", commit, "acme/policies")).await, 202);
    assert_eq!(syncs.try_recv().unwrap().reference.as_deref(), Some("refs/tags/v1.4.0"));
    assert_eq!(send("r4", &github_push("refs/heads/main", commit, "fork/policies")).await, 202);
    assert_eq!(syncs.try_recv().unwrap().repositories[0], "https://github.com/fork/policies.git");
    assert!(syncs.try_recv().is_err());
}

#[tokio::test]
async fn gitlab_token_and_generic_hmac() {
    let (address, mut syncs) = serve(Provider::GitLab { token: b"gl-token".to_vec() }, 4096).await;
    let body =
        br#"{"object_kind":"push","ref":"refs/heads/main","checkout_sha":"3333333333333333333333333333333333333333"}"#;
    let gitlab = |token: &str| vec![("X-Gitlab-Event", "Push Hook".to_string()), ("X-Gitlab-Token", token.to_string())];
    assert_eq!(post(&address, &gitlab("wrong"), body).await, 401);
    assert_eq!(post(&address, &gitlab("gl-token-and-more"), body).await, 401);
    assert!(syncs.try_recv().is_err());
    assert_eq!(post(&address, &gitlab("gl-token"), body).await, 202);
    let request = syncs.try_recv().unwrap();
    assert_eq!(request.commit.as_deref(), Some("3333333333333333333333333333333333333333"));
    // No repository named: unknown, so it may be a push to any.
    assert!(request.repositories.is_empty() && request.names_repository("https://gitlab.example.com/any/thing"));

    // A GitLab push payload (excerpt): the project's URLs.
    let body = serde_json::to_vec(&serde_json::json!({
        "object_kind": "push",
        "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "ref": "refs/heads/main",
        "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "user_username": "jsmith",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "policies",
            "web_url": "https://gitlab.example.com/platform/policies",
            "git_ssh_url": "git@gitlab.example.com:platform/policies.git",
            "git_http_url": "https://gitlab.example.com/platform/policies.git",
            "path_with_namespace": "platform/policies",
            "default_branch": "main"
        },
        "repository": {
            "name": "policies",
            "url": "git@gitlab.example.com:platform/policies.git",
            "homepage": "https://gitlab.example.com/platform/policies",
            "git_http_url": "https://gitlab.example.com/platform/policies.git",
            "git_ssh_url": "git@gitlab.example.com:platform/policies.git"
        },
        "total_commits_count": 1
    }))
    .unwrap();
    assert_eq!(post(&address, &gitlab("gl-token"), &body).await, 202);
    let request = syncs.try_recv().unwrap();
    assert_eq!(request.commit.as_deref(), Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"));
    let repositories = [
        "git@gitlab.example.com:platform/policies.git",
        "https://gitlab.example.com/platform/policies.git",
        "https://gitlab.example.com/platform/policies",
    ];
    let (same, other) =
        ("ssh://git@gitlab.example.com:2222/platform/policies.git", "https://gitlab.example.com/platform/other.git");
    assert_names(&request, &repositories, same, other);

    let secret = b"generic".to_vec();
    let (address, mut syncs) = serve(Provider::Generic { secret: secret.clone() }, 4096).await;
    let body = b"{}";
    assert_eq!(post(&address, &[("X-Signature", sign(b"nope", body))], body).await, 401);
    assert_eq!(
        post(&address, &[("X-Signature", sign(&secret, body)), ("X-Delivery-Id", "g1".into())], body).await,
        202
    );
    assert_eq!(
        post(&address, &[("X-Signature", sign(&secret, body)), ("X-Delivery-Id", "g1".into())], body).await,
        200
    );
    assert!(syncs.try_recv().is_ok() && syncs.try_recv().is_err());

    // The generic payload may name its repository.
    let body = br#"{"ref":"refs/heads/main","after":"5555555555555555555555555555555555555555","repository":"https://git.example.com/acme/policies"}"#;
    assert_eq!(post(&address, &[("X-Signature", sign(&secret, body))], body).await, 202);
    let request = syncs.try_recv().unwrap();
    assert_eq!(request.repositories, ["https://git.example.com/acme/policies"]);
    assert!(request.names_repository("ssh://git@git.example.com/acme/policies.git"));
}
