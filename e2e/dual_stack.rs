//! Local mode dual-stack from the command line: `palisade local up` gives dual-stack pods both
//! addresses and refuses a pod's IPv6 address outside its range, and `palisade local probe
//! --ip-family 6` connects between pods, the node and a Service over IPv6 (no agent: nothing
//! enforces), and the node's IPv6 address is `host` to the agent's datapath. The dual-stack
//! example's flows through the agent are in `examples.rs`.
mod support;

use std::process::Command;
use std::time::Duration;

use palisade_rollout::crd::Phase;
use support::*;

fn web() -> &'static str {
    "shop/web-5d8f7c6b4-a1b2c"
}

fn api() -> &'static str {
    "shop/api-6c9d8e7f5-d3e4f"
}

#[test]
fn local_probe_connects_over_the_family_asked_for() {
    let local = LocalCluster::up("e2q-", &examples().join("dual-stack/cluster.yaml"));
    // IPv4 by default, as before.
    let probe = local.probe(web(), api(), "8080");
    assert!(probe.connected, "{probe:?}");
    assert!(probe.stdout.contains(" 10.200.70.20:8080/TCP: connected"), "{probe:?}");
    // IPv6 between the pods: TCP and ICMPv6 echo.
    let probe = local.probe_in("6", web(), api(), "8080");
    assert!(probe.connected, "{probe:?}");
    assert!(
        probe.stdout.starts_with(&format!("{} -> {} [fd00:200::70:20]:8080/TCP: connected", web(), api())),
        "{probe:?}"
    );
    let probe = local.probe_in("6", web(), api(), "icmp");
    assert!(probe.connected && probe.stdout.contains(" fd00:200::70:20 ICMPv6: connected"), "{probe:?}");
    // The node namespace has the Node's IPv6 InternalIP: it reaches pods and answers them.
    assert!(local.probe_in("6", "node", api(), "8080").connected);
    let probe = local.probe_in("6", web(), "node", "icmp");
    assert!(probe.connected && probe.stdout.contains(" fd00:200::21 ICMPv6: connected"), "{probe:?}");
    // The Service through its IPv6 ClusterIP, to the backend's IPv6 address.
    let probe = local.probe_in("6", web(), "svc/shop/api", "80");
    assert!(
        probe.stdout.contains(&format!("[fd00:200::250:70]:80/TCP -> {} [fd00:200::70:20]:8080: connected", api())),
        "{probe:?}"
    );
    assert_eq!(probe.answered_by(), Some(api()));
    let probe = local.probe_in("6", "node", "svc/shop/api", "80");
    assert_eq!(probe.answered_by(), Some(api()), "{probe:?}");
    // A pod without an IPv6 address, at either end: an error naming it.
    for (from, to) in [(web(), "shop/legacy-report-0"), ("shop/legacy-report-0", web())] {
        let error = local.probe_error_in("6", from, to, "8080");
        assert!(
            error.contains(
                "pod shop/legacy-report-0 has no IPv6 address (status.podIPs): it cannot be probed over IPv6"
            ),
            "{error}"
        );
    }
    assert!(local.probe_in("4", web(), "shop/legacy-report-0", "8080").connected);
    let error = local.probe_error_in("5", web(), api(), "8080");
    assert!(error.contains("\"5\" is not an IP family: use 4 or 6"), "{error}");
}

#[test]
fn local_up_refuses_a_pods_ipv6_address_outside_its_range_naming_the_pod_and_field() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let up = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let output = Command::new(PALISADE)
            .args(["local", "up", "--prefix", "e2r-", "--cluster"])
            .arg(&file)
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--pin-dir")
            .arg(dir.path().join("pins"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let pod = "kind: Pod
metadata: {name: web, namespace: shop}
status:
  podIP: 10.200.80.10
  podIPs: [{ip: 10.200.80.10}, {ip: \"2001:db8::10\"}]
";
    let error = up("pod.yaml", pod);
    assert!(
        error.contains("pod shop/web: status.podIPs[1] 2001:db8::10 is outside fd00:200::/64: local mode puts IPv6 addresses only from that range on interfaces"),
        "{error}"
    );
    let error = up(
        "pod.yaml",
        &pod.replace(
            "podIPs: [{ip: 10.200.80.10}, {ip: \"2001:db8::10\"}]",
            "podIPs: [{ip: 10.200.80.10}, {ip: \"fd00:200::250:10\"}]",
        ),
    );
    assert!(
        error.contains(
            "pod shop/web: status.podIPs[1] fd00:200::250:10 is in the IPv6 Service range fd00:200::250:0/112"
        ),
        "{error}"
    );
    assert!(palisade_netsim::net::netns_with_prefix("e2r-").unwrap().is_empty(), "nothing was created");
}

/// The node namespace's IPv6 address (the Node's IPv6 InternalIP) is the local host to the
/// datapath, as its IPv4 one is: `--allow-localhost always` lets it through the API's default
/// deny over IPv6, `policy` judges it by the API's policy, which has no rule for it.
#[test]
fn the_node_is_the_local_host_over_ipv6_too() {
    let dir = examples().join("dual-stack");
    let repo = Repo::new();
    repo.commit_dir(&dir.join("policies"), "policies");
    let mut local = LocalCluster::up("e2w-", &dir.join("cluster.yaml"));
    let rollout = rollout_yaml("palisade-system", "dual-stack", &repo, "0s", "  scope: Cluster\n");
    local.run(&rollout);
    local.wait("palisade-system", "dual-stack", "the policies to be enforced", Duration::from_secs(60), |s| {
        s.phase == Phase::Enforced
    });
    let converge = Duration::from_secs(20);
    assert!(local.eventually_reaches(web(), api(), "9090/TCP", false, converge), "enforced\n{}", local.log());
    assert!(!local.reaches_in("6", web(), api(), "9090/TCP"), "the web tier is denied the metrics port over IPv6");
    assert!(local.reaches_in("6", "node", api(), "9090/TCP"), "always: the node over IPv6\n{}", local.log());
    assert!(local.reaches_in("6", "node", api(), "icmp"), "always: ICMPv6 echo from the node");

    local.kill();
    local.run_with(&rollout, &["--allow-localhost", "policy"]);
    let denied = || !local.reaches_in("6", "node", api(), "9090/TCP");
    let deadline = std::time::Instant::now() + converge;
    while !denied() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(denied(), "policy: the API's default deny applies to the node over IPv6\n{}", local.log());
    assert!(!local.reaches_in("4", "node", api(), "9090/TCP"), "and over IPv4");
    assert!(local.reaches_in("6", "node", web(), "8080/TCP"), "no policy selects the web tier: open to the node");
}
