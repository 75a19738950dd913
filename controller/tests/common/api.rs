//! The in-memory API server on a local port, for the `palisade` binary to reach through a
//! kubeconfig as it would reach a cluster: every request goes to [`FakeApi`] unchanged (headers
//! included, so SelfSubjectReview sees the kubeconfig's token), and watches stream.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use palisade_fake_apiserver::FakeApi;

/// The token of the kubeconfig's user (see [`kubeconfig`]).
pub const TOKEN: &str = "alice-token";

/// Serves `api` over HTTP on 127.0.0.1 until `runtime` ends; returns where.
pub fn listen(runtime: &tokio::runtime::Runtime, api: &FakeApi) -> SocketAddr {
    // The fake's client buffers its requests on the runtime.
    let _entered = runtime.enter();
    let router = axum::Router::new().fallback(proxy).with_state(api.client());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, router).await });
    address
}

async fn proxy(State(client): State<kube::Client>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("the request body");
    let request = http::Request::from_parts(parts, kube::client::Body::from(bytes));
    match client.send(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// Kubeconfig `name` in `dir`: one context, `fake`, on `server` in namespace `namespace`, as user
/// alice with [`TOKEN`].
pub fn kubeconfig(dir: &Path, name: &str, server: &str, namespace: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\n\
         contexts:\n- name: fake\n  context: {{cluster: fake, user: alice, namespace: {namespace}}}\n\
         users:\n- name: alice\n  user: {{token: {TOKEN}}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}
