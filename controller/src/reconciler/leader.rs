//! Leader election on a coordination.k8s.io Lease, as client-go does it: the holder renews the
//! Lease well within its duration; another replica takes it over only after it has seen the Lease
//! unchanged for a whole duration on its own clock, so clock skew between nodes does not matter.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::info;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's resourceVersion when last read, and when it was first seen at that version.
    observed: Mutex<Option<(String, Instant)>>,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: Mutex::default(),
        }
    }

    /// Takes the Lease when it is free or expired, renews it when held. `Ok(false)`: another
    /// replica holds it, or won a race for it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        if !mine && holder.is_some() && !self.expired(&lease, &spec) {
            return Ok(false);
        }
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if mine { spec.acquire_time } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
            ..spec
        };
        if !mine {
            info!(lease = %self.name, previous = ?holder, "taking over the lease");
        }
        // Replacing with the resourceVersion read makes a concurrent takeover fail with a conflict.
        let lease = Lease { metadata: lease.metadata, spec: Some(spec) };
        self.write(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }

    fn write(&self, result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.is_conflict() || e.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn expired(&self, lease: &Lease, spec: &LeaseSpec) -> bool {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let mut observed = self.observed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let since = match &*observed {
            Some((seen, since)) if *seen == version => *since,
            _ => {
                *observed = Some((version, Instant::now()));
                Instant::now()
            }
        };
        let duration = spec.lease_duration_seconds.map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        since.elapsed() > duration
    }

    /// Steps down: a Lease with no holder can be taken at once by the other replica.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let spec = LeaseSpec { holder_identity: None, lease_duration_seconds: Some(1), ..spec };
        let lease = Lease { metadata: lease.metadata, spec: Some(spec) };
        self.write(self.api.replace(&self.name, &PostParams::default(), &lease).await).map(|_| ())
    }
}
