//! What the controller and the agent processes share: `/metrics`, `/healthz` and `/readyz`, and
//! stopping on SIGTERM as Kubernetes asks.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tracing::warn;

/// A process's metrics, served in the OpenMetrics text format.
pub trait OpenMetrics: Send + Sync + 'static {
    fn registry(&self) -> &Registry;

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, self.registry())?;
        Ok(out)
    }
}

/// Whether the process may be sent traffic; each process says when it is.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router<M: OpenMetrics>(metrics: Arc<M>, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics::<M>).with_state(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_ready).with_state(ready))
}

async fn serve_metrics<M: OpenMetrics>(State(metrics): State<Arc<M>>) -> impl IntoResponse {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn serve_ready(State(ready): State<Arc<Readiness>>) -> (StatusCode, &'static str) {
    if ready.is_ready() { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

/// SIGTERM (as Kubernetes stops a Pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
