//! An in-memory Kubernetes API server behind `kube::Client`, for the controller's and the agent's
//! tests: it answers the REST calls kube-rs makes the way the real API server does where the
//! callers depend on it.
//!
//! - get; list with label selectors (equality and set-based) and field selectors, in any or
//!   every namespace; watch in the protocol kube-runtime's watcher speaks (from a
//!   resourceVersion, ADDED / MODIFIED / DELETED, BOOKMARK when asked for, 410 Gone after
//!   [`FakeApi::expire`]), with one resourceVersion counter across the store;
//! - create (409 AlreadyExists), replace and patches with `metadata.resourceVersion`
//!   preconditions (409 Conflict when stale); merge, strategic-merge (as merge) and JSON
//!   patches; server-side apply with field ownership per manager (see [`fields`]): applying a
//!   field another manager owns with another value is a 409 Conflict unless forced;
//! - the status subresource (status writes leave the rest alone, and other writes the status);
//!   delete with finalizers (a deletionTimestamp until they are gone) and owner-reference
//!   garbage collection;
//! - TokenReview, SubjectAccessReview and SelfSubjectReview (see [`review`]), from the tokens
//!   ([`FakeApi::add_token`]) and the authorizer ([`FakeApi::authorize`]) a test configures;
//!   [`FakeApi::client_with_token`] sends a bearer token as kube does for a kubeconfig user;
//! - a log of every request for assertions.
//!
//! Tests change the cluster as other clients would with [`FakeApi::put`], [`FakeApi::update`]
//! and [`FakeApi::remove`], and read it with [`FakeApi::get`] and [`FakeApi::list`].

mod fields;
pub mod review;
mod selector;
mod server;
mod store;
mod watch;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use serde_json::Value;

use crate::review::Reviews;
pub use crate::review::{Access, User};
use crate::store::{Key, Store};

/// Collections (the path of a resource below the API root), as the fake's methods take them.
pub mod collections {
    pub const PODS: &str = "api/v1/pods";
    pub const NAMESPACES: &str = "api/v1/namespaces";
    pub const NODES: &str = "api/v1/nodes";
    pub const SERVICES: &str = "api/v1/services";
    pub const ENDPOINT_SLICES: &str = "apis/discovery.k8s.io/v1/endpointslices";
    pub const LEASES: &str = "apis/coordination.k8s.io/v1/leases";
    /// Events as kube-runtime's Recorder writes them.
    pub const EVENTS: &str = "apis/events.k8s.io/v1/events";
    pub const ROLLOUTS: &str = "apis/palisade.dev/v1alpha1/policyrollouts";
    pub const REVISIONS: &str = "apis/palisade.dev/v1alpha1/policyrevisions";
    pub const REPORTS: &str = "apis/palisade.dev/v1alpha1/policyauditreports";
    pub const DECISIONS: &str = "apis/palisade.dev/v1alpha1/policydecisions";
    pub const TOKEN_REVIEWS: &str = "apis/authentication.k8s.io/v1/tokenreviews";
    pub const SELF_SUBJECT_REVIEWS: &str = "apis/authentication.k8s.io/v1/selfsubjectreviews";
    pub const SUBJECT_ACCESS_REVIEWS: &str = "apis/authorization.k8s.io/v1/subjectaccessreviews";
}

/// The field manager of the changes tests make through [`FakeApi::put`] and friends.
pub const TEST_MANAGER: &str = "test-client";

/// One request as the server received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// The query string as sent; None without a `?`.
    pub query: Option<String>,
    pub content_type: String,
    /// The JSON body; Null without one.
    pub body: Value,
}

impl Logged {
    /// The query string, empty without one.
    pub fn query(&self) -> &str {
        self.query.as_deref().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    store: Store,
    log: Vec<Logged>,
    /// The log leaves bodies out (see [`FakeApi::forget_bodies`]).
    forget_bodies: bool,
    reviews: Reviews,
}

/// The server; clones share it.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

fn key(collection: &str, namespace: &str, name: &str) -> Key {
    (collection.into(), namespace.into(), name.into())
}

impl FakeApi {
    /// A client whose requests this server answers; its default namespace is `default`.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Serves the API over plain HTTP/1.1 on `listener`, for a client in another process (one
    /// whose memory a benchmark measures apart from the server's); until the future is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let api = self.clone();
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let api = api.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    Ok::<_, Infallible>(api.handle(http::Request::from_parts(parts, body.into())).await)
                }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new();
                // A client gone mid-request is its own business.
                let _ = connection.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    }

    /// A client that sends `Authorization: Bearer <token>` with every request, as kube does for
    /// a kubeconfig user with a token: SelfSubjectReview answers with the token's user.
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let api = self.clone();
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token fit for a header");
        let service = tower::service_fn(move |mut request: http::Request<kube::client::Body>| {
            let api = api.clone();
            request.headers_mut().insert(http::header::AUTHORIZATION, bearer.clone());
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Makes `token` authenticate as `user`: TokenReviews of it and SelfSubjectReviews sent with
    /// it (see [`FakeApi::client_with_token`]) answer with `user`; unknown tokens do not
    /// authenticate.
    pub fn add_token(&self, token: &str, user: User) {
        self.state().reviews.tokens.insert(token.into(), user);
    }

    /// Decides every SubjectAccessReview from now on (until the next call); without one, every
    /// review is denied. `decide` runs under the server's lock: it must not call the server.
    pub fn authorize(&self, decide: impl Fn(&Access) -> bool + Send + Sync + 'static) {
        self.state().reviews.authorizer = Some(Arc::new(decide));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("the fake API server's lock")
    }

    /// Creates or replaces an object (status included) as another client with full rights
    /// would; watches see it.
    pub fn put(&self, collection: &str, object: Value) {
        self.store(collection, object, true);
    }

    /// Like [`FakeApi::put`], while no watch sees it (the event is lost, as when a watch was
    /// away and the server compacted its history).
    pub fn put_unseen(&self, collection: &str, object: Value) {
        self.store(collection, object, false);
    }

    fn store(&self, collection: &str, object: Value, seen: bool) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().expect("metadata.name");
        let key = key(collection, namespace, name);
        self.state().store.write(&key, object, TEST_MANAGER, None, seen);
    }

    /// Changes an object as another client would (a spec edit, an annotation, an approval).
    pub fn update(&self, collection: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut object = self.get(collection, namespace, name).expect("the object to update");
        change(&mut object);
        self.put(collection, object);
    }

    /// Deletes an object as another client would: finalizers hold it, what it owns goes with it.
    pub fn remove(&self, collection: &str, namespace: &str, name: &str) {
        self.state().store.delete(&key(collection, namespace, name), true).expect("the object to remove");
    }

    /// Like [`FakeApi::remove`], while no watch sees it.
    pub fn remove_unseen(&self, collection: &str, namespace: &str, name: &str) {
        self.state().store.delete(&key(collection, namespace, name), false).expect("the object to remove");
    }

    /// Expires every resourceVersion of `collection` so far: its watches end with 410 Gone, and
    /// the watchers list again.
    pub fn expire(&self, collection: &str) {
        let store = &mut self.state().store;
        store.version += 1;
        let version = store.version;
        store.watches.expire(collection, version);
    }

    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state().store.get(&key(collection, namespace, name)).cloned()
    }

    /// The objects of `collection` in every namespace (and cluster-scoped ones).
    pub fn all(&self, collection: &str) -> Vec<Value> {
        self.state().store.objects(collection).cloned().collect()
    }

    /// The objects of `collection` in `namespace`, in name order.
    pub fn list(&self, collection: &str, namespace: &str) -> Vec<Value> {
        let state = self.state();
        state
            .store
            .objects(collection)
            .filter(|o| o["metadata"]["namespace"].as_str().unwrap_or_default() == namespace)
            .cloned()
            .collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// Gets, lists and watches so far.
    pub fn reads(&self) -> Vec<Logged> {
        self.requests().into_iter().filter(|r| r.method == "GET").collect()
    }

    /// Every other request so far.
    pub fn writes(&self) -> Vec<Logged> {
        self.requests().into_iter().filter(|r| r.method != "GET").collect()
    }

    /// From now on the log keeps requests without their bodies: a benchmark's hundreds of
    /// thousands of writes would otherwise hold gigabytes.
    pub fn forget_bodies(&self) {
        self.state().forget_bodies = true;
    }

    /// How many reads (gets, lists and watches) and writes (every other request) so far,
    /// without copying the log.
    pub fn request_counts(&self) -> (usize, usize) {
        let state = self.state();
        let reads = state.log.iter().filter(|r| r.method == "GET").count();
        (reads, state.log.len() - reads)
    }

    /// How many requests of `verb` (see [`Logged::verb`]) so far.
    pub fn count(&self, verb: &str) -> usize {
        self.state().log.iter().filter(|r| r.verb() == verb).count()
    }
}
