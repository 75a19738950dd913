//! Prometheus metrics, and the HTTP server for them and for the health probes.
use std::collections::HashMap;
use std::sync::Mutex;

use palisade_process::OpenMetrics;
use palisade_rollout::crd::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub namespace: String,
    pub rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PromotionLabels {
    /// "true" for a revert promoted without a new audit.
    pub fast_track: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Counter,
    pub rollouts: Family<PhaseLabels, Gauge>,
    pub audit_new_denies: Family<RolloutLabels, Gauge>,
    pub promotions: Family<PromotionLabels, Counter>,
    pub rollbacks: Counter,
    pub source_fetch: Histogram,
    /// The phase each rollout was last counted in, so the per-phase gauges add up.
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        // From 1 ms to 11 s in steps of 1.5x, fine enough to tell 40 ms from 60 ms.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 1.5, 24));
        let reconcile_errors = Counter::default();
        let rollouts = Family::<PhaseLabels, Gauge>::default();
        let audit_new_denies = Family::<RolloutLabels, Gauge>::default();
        let promotions = Family::<PromotionLabels, Counter>::default();
        let rollbacks = Counter::default();
        let source_fetch = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one PolicyRollout",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried with backoff",
            reconcile_errors.clone(),
        );
        registry.register("rollouts", "PolicyRollouts by phase", rollouts.clone());
        registry.register(
            "audit_new_denies",
            "Flows the candidate would newly deny, per rollout, over all nodes",
            audit_new_denies.clone(),
        );
        registry.register("promotions", "Promotions started (nodes asked to flip)", promotions.clone());
        registry.register("rollbacks", "Automatic rollbacks after a drop spike", rollbacks.clone());
        registry.register(
            "source_fetch_duration_seconds",
            "Time to fetch and build a Git source",
            source_fetch.clone(),
        );
        Metrics {
            registry,
            reconcile_duration,
            reconcile_errors,
            rollouts,
            audit_new_denies,
            promotions,
            rollbacks,
            source_fetch,
            phases: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts rollout `key` in `phase` (None: deleted) and records its new denies.
    pub fn observe(&self, namespace: &str, rollout: &str, phase: Option<Phase>, new_denies: u64) {
        let key = format!("{namespace}/{rollout}");
        let mut phases = self.phases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = match phase {
            Some(phase) => phases.insert(key, phase),
            None => phases.remove(&key),
        };
        if old != phase {
            if let Some(old) = old {
                self.rollouts.get_or_create(&phase_labels(old)).dec();
            }
            if let Some(new) = phase {
                self.rollouts.get_or_create(&phase_labels(new)).inc();
            }
        }
        let labels = RolloutLabels { namespace: namespace.into(), rollout: rollout.into() };
        match phase {
            Some(_) => {
                self.audit_new_denies.get_or_create(&labels).set(i64::try_from(new_denies).unwrap_or(i64::MAX));
            }
            None => {
                self.audit_new_denies.remove(&labels);
            }
        }
    }
}

impl OpenMetrics for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

fn phase_labels(phase: Phase) -> PhaseLabels {
    let name = serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    PhaseLabels { phase: name }
}
