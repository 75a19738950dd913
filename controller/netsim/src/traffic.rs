//! Steady background traffic: the peers pods declare in their `palisade.dev/talks-to`
//! annotation, connected to from inside each pod's namespace at an interval, with counters.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_policy::Cluster;
use palisade_policy::l7::HttpRequest;

use crate::IpFamily;
use crate::annotations::{for_each_pod, report};
use crate::dns::{self, DNS_PORT, Resolved};
use crate::error::{Error, Result};
use crate::http;
use crate::net::{LocalNetwork, PodNet, spawn_in_netns};
use crate::probe::{Exchange, Port, attempt};
use crate::services;
use crate::state::Local;

/// `"db/postgres:5432/TCP, shop/api:8080, ops/dns:53/UDP, ops/dns:icmp, svc/shop/api:80"`:
/// comma-separated `NAMESPACE/POD:PORT[/PROTOCOL]` or `svc/NAMESPACE/NAME:PORT[/PROTOCOL]` (a
/// Service through its ClusterIP), TCP when no protocol is given.
pub const TALKS_TO: &str = "palisade.dev/talks-to";

/// One declared flow, and the key of its counters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Talk {
    /// `namespace/name` of the client pod.
    pub from: String,
    /// `namespace/name` of the server pod, or `svc/namespace/name` of a Service.
    pub to: String,
    pub port: Port,
}

/// Reads every pod's `palisade.dev/talks-to` annotation from a cluster file. Both ends must be
/// pods of `network`, or the server a port of a Service of `cluster` with a ClusterIP. Errors
/// name the file, line and field of every bad entry.
pub fn read_talks(file: &str, text: &str, cluster: &Cluster, network: &LocalNetwork) -> Result<Vec<Talk>> {
    let reader = Reader { cluster, network };
    let mut talks = Vec::new();
    let errors = for_each_pod(file, text, |pod| {
        let list = match pod.string(TALKS_TO) {
            Ok(Some(list)) => list,
            Ok(None) => return Vec::new(),
            Err(error) => return vec![error],
        };
        if network.pod(&pod.key).is_none() {
            let message = format!("pod {} has no network namespace (it needs a podIP and no hostNetwork)", pod.key);
            return vec![pod.error(TALKS_TO, message)];
        }
        let mut errors = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match reader.talk(&pod.key, entry) {
                Ok(talk) => talks.push(talk),
                Err(message) => errors.push(pod.error(TALKS_TO, format!("{entry:?}: {message}"))),
            }
        }
        errors
    })?;
    report(errors)?;
    Ok(talks)
}

struct Reader<'a> {
    cluster: &'a Cluster,
    network: &'a LocalNetwork,
}

impl Reader<'_> {
    fn talk(&self, from: &str, entry: &str) -> Result<Talk, String> {
        let (to, port) = entry.rsplit_once(':').ok_or("expected NAMESPACE/POD:PORT[/PROTOCOL]")?;
        let port = port.parse()?;
        if let Some(service) = to.strip_prefix("svc/") {
            services::resolve(self.cluster, service, port, IpFamily::IPv4)?;
        } else if to.split('/').count() != 2 || to.split('/').any(str::is_empty) {
            return Err(format!("{to:?} is not NAMESPACE/POD or svc/NAMESPACE/NAME"));
        } else if self.network.pod(to).is_none() {
            return Err(format!("no pod {to} with a network namespace (it needs a podIP and no hostNetwork)"));
        }
        Ok(Talk { from: from.to_owned(), to: to.to_owned(), port })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficOptions {
    /// Pause after each attempt of one flow.
    pub interval: Duration,
    /// How long one attempt waits for a connection or an echo.
    pub timeout: Duration,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        TrafficOptions { interval: Duration::from_secs(1), timeout: Duration::from_millis(500) }
    }
}

/// Attempts of one flow so far. A failure is anything but a connection with its echo: refused,
/// timed out, unreachable, or an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub successes: u64,
    pub failures: u64,
}

/// One thread per flow, inside the client pod's namespace. Stops when dropped or stopped.
pub struct TrafficGenerator {
    stop: Arc<(Mutex<bool>, Condvar)>,
    counts: Arc<Mutex<BTreeMap<Talk, Counts>>>,
    threads: Vec<JoinHandle<()>>,
}

impl TrafficGenerator {
    /// Starts every flow of `local`; the first attempts begin at once.
    pub fn start(local: &Local, options: TrafficOptions) -> Result<TrafficGenerator> {
        let (network, talks) = (&local.network, &local.talks);
        let mut generator = TrafficGenerator {
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            counts: Arc::new(Mutex::new(talks.iter().map(|t| (t.clone(), Counts::default())).collect())),
            threads: Vec::new(),
        };
        for talk in talks {
            let pod = |key: &str| {
                network.pod(key).ok_or_else(|| Error::Cluster(format!("no pod {key} in the local network")))
            };
            // A Service's backends are alike: the first says what its port serves.
            let (to, server) = match talk.to.strip_prefix("svc/") {
                Some(service) => {
                    let (ip, service, port) = services::resolve(&local.cluster, service, talk.port, IpFamily::IPv4)
                        .map_err(Error::Cluster)?;
                    let backend = local.cluster.backends(service, port).into_iter().next();
                    let server = backend.and_then(|b| Some((network.pod(b.pod.as_deref()?)?, b.port)));
                    (ip, server)
                }
                None => {
                    let server = pod(&talk.to)?;
                    (IpAddr::from(server.ip), talk.port.number().map(|n| (server, n)))
                }
            };
            let ask = server.map_or(Ask::Echo, |(pod, number)| Ask::of(pod, talk.port, number));
            let from = pod(&talk.from)?;
            let (stop, counts, flow) = (generator.stop.clone(), generator.counts.clone(), talk.clone());
            let thread = spawn_in_netns(&from.netns, move || run(&flow, to, &ask, options, &stop, &counts))
                .map_err(|e| Error::io(format!("start traffic from {}", talk.from), e))?;
            generator.threads.push(thread);
        }
        Ok(generator)
    }

    /// A snapshot of every flow's counters.
    pub fn counts(&self) -> BTreeMap<Talk, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops every flow and waits for attempts in progress (at most one timeout).
    pub fn stop(self) {}
}

impl Drop for TrafficGenerator {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What a flow asks its server, as a real client of what serves the port would.
enum Ask {
    /// Bytes that must be echoed.
    Echo,
    /// `GET /`, which must get a response other than 403.
    Http,
    /// An A query for a name of the DNS pod, which must get NOERROR.
    Dns(String),
    /// A DNS pod's 53/TCP, a Kafka port: the handshake.
    Connect,
}

impl Ask {
    /// For `port` of `server`, whose own port number it is (a Service's target port).
    fn of(server: &PodNet, port: Port, number: u16) -> Ask {
        match (port, &server.dns) {
            (Port::Tcp(_), _) if server.http_ports.contains(&number) => Ask::Http,
            (Port::Tcp(_), _) if server.kafka_ports.contains(&number) => Ask::Connect,
            (Port::Udp(DNS_PORT), Some(zone)) if number == DNS_PORT => {
                Ask::Dns(zone.records.keys().next().cloned().unwrap_or_default())
            }
            (Port::Tcp(DNS_PORT), Some(_)) if number == DNS_PORT => Ask::Connect,
            _ => Ask::Echo,
        }
    }

    /// One attempt from the calling thread's namespace: whether it got its answer.
    fn answered(&self, to: IpAddr, port: Port, timeout: Duration) -> bool {
        let exchange = match (self, port) {
            (Ask::Http, Port::Tcp(number)) => {
                return http::request_here(to, number, &GET, timeout).is_ok_and(|o| o.passed());
            }
            (Ask::Dns(name), _) => {
                return dns::resolve_here(to, name, timeout).is_ok_and(|r| matches!(r, Resolved::Addresses(_)));
            }
            (Ask::Connect, _) => Exchange::Connect,
            _ => Exchange::Echo,
        };
        attempt(to, port, timeout, exchange).is_ok_and(|(o, _)| o.is_connected())
    }
}

/// The request of flows to HTTP ports.
static GET: LazyLock<HttpRequest> = LazyLock::new(|| HttpRequest::parse("GET /", &[]).expect("a valid request"));

fn run(
    talk: &Talk,
    to: IpAddr,
    ask: &Ask,
    options: TrafficOptions,
    stop: &(Mutex<bool>, Condvar),
    counts: &Mutex<BTreeMap<Talk, Counts>>,
) {
    let (stopped, wake) = stop;
    loop {
        let connected = ask.answered(to, talk.port, options.timeout);
        if let Some(count) = counts.lock().unwrap_or_else(PoisonError::into_inner).get_mut(talk) {
            if connected {
                count.successes += 1;
            } else {
                count.failures += 1;
            }
        }
        let guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = wake
            .wait_timeout_while(guard, options.interval, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        if *guard {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_policy::SourceFile;

    use super::*;

    const CLUSTER: &str = "\
apiVersion: v1
kind: List
items:
- kind: Pod
  metadata:
    name: api
    namespace: shop
  status:
    podIP: 10.200.1.1
- kind: Pod
  metadata:
    name: app
    namespace: shop
    annotations:
      palisade.dev/talks-to: \"shop/api:8080, shop/api:53/udp, shop/api:icmp, shop/api:80a, api:80, shop/gone:80, shop/api:80/SCTP, svc/shop/api:80, svc/shop/api:81\"
  status:
    podIP: 10.200.1.2
- kind: Service
  metadata:
    name: api
    namespace: shop
  spec:
    clusterIP: 10.200.250.10
    ports: [{port: 80}]
";

    fn talks(text: &str) -> Result<Vec<Talk>> {
        let cluster = Cluster::parse(&[SourceFile { name: "cluster.yaml", text }]).unwrap();
        read_talks("cluster.yaml", text, &cluster, &LocalNetwork::plan(&cluster, "t-").unwrap())
    }

    #[test]
    fn bad_entries_name_the_file_line_and_field() {
        let field = "cluster.yaml:15: items[1].metadata.annotations[\"palisade.dev/talks-to\"]";
        let expected = [
            format!("{field}: \"shop/api:80a\": \"80a\" is not a port number (1-65535)"),
            format!("{field}: \"api:80\": \"api\" is not NAMESPACE/POD or svc/NAMESPACE/NAME"),
            format!(
                "{field}: \"shop/gone:80\": no pod shop/gone with a network namespace (it needs a podIP and no hostNetwork)"
            ),
            format!("{field}: \"shop/api:80/SCTP\": protocol \"SCTP\": use TCP or UDP, or `icmp` without a port"),
            format!("{field}: \"svc/shop/api:81\": Service shop/api has no port 81/TCP (it has 80/TCP)"),
        ];
        assert_eq!(talks(CLUSTER).unwrap_err().to_string(), expected.join("\n"));
    }

    #[test]
    fn entries_default_to_tcp() {
        let good = CLUSTER
            .replace(", shop/api:80a, api:80, shop/gone:80, shop/api:80/SCTP", "")
            .replace(", svc/shop/api:81", "");
        let to = |to: &str, port| Talk { from: "shop/app".into(), to: to.into(), port };
        assert_eq!(
            talks(&good).unwrap(),
            [
                to("shop/api", Port::Tcp(8080)),
                to("shop/api", Port::Udp(53)),
                to("shop/api", Port::Icmp),
                to("svc/shop/api", Port::Tcp(80))
            ]
        );
    }
}
