//! Flow observation on the real datapath, with pods as network namespaces (root only: fails
//! without it): a denied connection is observed as DROPPED naming both pods and the rule, a
//! connection the candidate would deny as a difference, and both are served on `/flows`.
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::wait_for_report;
use palisade_agent::Change;
use palisade_agent::observe::{FlowVerdict, ObserveLine, ObservedFlow, UnixServer};
use palisade_agent::runtime::AgentHandle;
use palisade_netsim::{LocalNetwork, Port, probe};
use tokio::sync::broadcast;

const PREFIX: &str = "pob-";
const PIN_DIR: &str = "/sys/fs/bpf/palisade-test-observe";

/// The database takes `port` from the API and refuses batch outright.
fn revision(name: &str, port: u16) -> Change {
    let content = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: db, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n    - fromEndpoints: [{{matchLabels: {{app: api}}}}]\n      toPorts: [{{ports: [{{port: '{port}', protocol: TCP}}]}}]\n  ingressDeny:\n    - fromEndpoints: [{{matchLabels: {{app: batch}}}}]\n"
    );
    common::revision(name, &content)
}

/// Probes `from` -> `to`:`port` until a flow matching `wanted` is observed.
fn observe_while_probing(
    network: &LocalNetwork,
    flows: &mut broadcast::Receiver<Arc<ObservedFlow>>,
    (from, to, port): (&str, &str, u16),
    wanted: impl Fn(&ObservedFlow) -> bool,
) -> ObservedFlow {
    let source = network.pod(from).expect("pod");
    let destination = network.pod(to).expect("pod").ip;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let _ = probe(source, destination, Port::Tcp(port), Duration::from_millis(50)).expect("probe");
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            match flows.try_recv() {
                Ok(flow) if wanted(&flow) => return (*flow).clone(),
                Ok(flow) => seen.push(flow),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    panic!("{from} -> {to}:{port} was never observed as expected; saw {seen:#?}");
}

#[test]
fn denied_connections_and_shadow_differences_are_observed() {
    let cluster = common::shop(32);
    let (_cleanup, network, _responders, AgentHandle { changes, mut reports, thread, flows: hub }) =
        common::start_agent(PREFIX, PIN_DIR, &cluster);
    let (_, mut flows) = hub.subscribe().expect("running");
    let send = |change: Change| changes.send(change).expect("agent running");
    common::sync_shop(&changes, &mut reports, &cluster, |_| true, revision);

    // batch may not reach the database: a drop, by the deny rule, naming both pods.
    let dropped = observe_while_probing(&network, &mut flows, ("shop/batch", "shop/db", 5432), |f| {
        f.verdict == FlowVerdict::Dropped && f.source.pod.as_deref() == Some("batch")
    });
    assert_eq!(dropped.source.name(), "shop/batch");
    assert_eq!(dropped.destination.name(), "shop/db");
    assert_eq!(
        (dropped.source.ip, dropped.destination.ip),
        ("10.200.32.3".parse().unwrap(), "10.200.32.2".parse().unwrap())
    );
    assert_eq!((dropped.port, dropped.protocol.as_str(), dropped.direction.as_str()), (5432, "TCP", "ingress"));
    assert_eq!(dropped.decided_by.policy.as_deref(), Some("CiliumNetworkPolicy shop/db"));
    assert_eq!(dropped.decided_by.rule.as_deref(), Some("spec.ingressDeny[0]"));
    assert_eq!(dropped.enforced_revision.as_deref(), Some("main@db-r1"));
    assert_eq!(dropped.rollout.as_ref().map(|r| r.name.as_str()), Some("db"));
    assert_eq!(dropped.drop_reason.as_deref(), Some("policy-denied"));
    assert!(!dropped.differs());

    // The candidate moves the database to 5433: api's connections to 5432 pass but differ.
    send(common::rollout(Some("db-r1"), Some("db-r2")));
    wait_for_report(&mut reports, |r| r.loaded_revisions.contains(&"db-r2".to_string()));
    let diff = observe_while_probing(&network, &mut flows, ("shop/api", "shop/db", 5432), |f| f.differs());
    assert_eq!(diff.verdict, FlowVerdict::Forwarded, "the candidate only watches");
    assert_eq!(diff.drop_reason, None);
    assert_eq!((diff.source.name().as_str(), diff.destination.name().as_str()), ("shop/api", "shop/db"));
    assert_eq!(diff.decided_by.rule.as_deref(), Some("spec.ingress[0]"));
    let candidate = diff.candidate.as_ref().expect("candidate");
    assert_eq!(candidate.verdict, FlowVerdict::Dropped);
    assert_eq!(candidate.drop_reason.as_deref(), Some("policy-denied"));
    assert!(candidate.decided_by.description.contains("default deny"), "{:?}", candidate.decided_by);
    assert_eq!(
        (diff.enforced_revision.as_deref(), diff.candidate_revision.as_deref()),
        (Some("main@db-r1"), Some("main@db-r2"))
    );

    // Both are served on a socket as `palisade observe --local` reads them.
    let socket = std::env::temp_dir().join(format!("palisade-observe-test-{}.sock", std::process::id()));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(async { UnixServer::start(hub.clone(), &socket) }).expect("serve");
    let lines = {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        stream.write_all(b"GET /flows?namespace=shop&last=50&follow=false HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let lines: Vec<String> = BufReader::new(stream).lines().map(Result::unwrap).collect();
        lines
    };
    assert!(lines[0].contains(" 200 "), "{lines:?}");
    let served: Vec<ObservedFlow> = lines
        .iter()
        .skip_while(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_str::<ObserveLine>(l) {
            Ok(ObserveLine::Flow(flow)) => Some(*flow),
            _ => None,
        })
        .collect();
    assert!(served.contains(&dropped) && served.contains(&diff), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains(r#""drop_reason":"policy-denied""#)), "{lines:#?}");
    drop(server);
    assert!(!socket.exists(), "the socket goes with the server");
    drop(changes);
    thread.join().expect("agent thread").expect("agent");
}
