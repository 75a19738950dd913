//! Leader election against the in-memory API server, and the metrics and probe endpoints over a
//! real socket.
use std::sync::Arc;
use std::time::Duration;

use palisade::reconciler::{LeaseLock, Metrics, Readiness, metrics_router};
use palisade_fake_apiserver::FakeApi;
use palisade_fake_apiserver::collections::LEASES;

#[tokio::test]
async fn one_replica_leads_until_it_steps_down_or_its_lease_expires() {
    let api = FakeApi::default();
    let lock = |identity| {
        LeaseLock::new(api.client(), "palisade-system", "palisade-controller", identity, Duration::from_secs(1))
    };
    let (a, b) = (lock("a"), lock("b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap(), "held by a");
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    let lease = api.get(LEASES, "palisade-system", "palisade-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");

    a.release().await.unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap(), "released: b takes it at once");
    let lease = api.get(LEASES, "palisade-system", "palisade-controller").unwrap();
    assert_eq!(
        (lease["spec"]["holderIdentity"].as_str(), lease["spec"]["leaseTransitions"].as_i64()),
        (Some("b"), Some(1))
    );

    // b stops renewing: a must see the lease unchanged for a whole duration before taking it.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(a.try_acquire_or_renew().await.unwrap(), "expired");
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b has lost it");
}

/// A plain HTTP/1.1 GET on its own thread, so the server keeps running on the test's runtime.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn metrics_and_probes_are_served() {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(Readiness::default());
    metrics.observe("shop", "web", Some(palisade_rollout::crd::Phase::Auditing), 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, metrics_router(metrics, ready.clone())).into_future());

    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
    ready.set(true);
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    let text = get(addr, "/metrics").await;
    for line in [
        "palisade_rollouts{phase=\"Auditing\"} 1",
        "palisade_audit_new_denies{namespace=\"shop\",rollout=\"web\"} 3",
        "# TYPE palisade_reconcile_duration_seconds histogram",
        "# TYPE palisade_source_fetch_duration_seconds histogram",
        "palisade_reconcile_errors_total 0",
        "palisade_rollbacks_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}
