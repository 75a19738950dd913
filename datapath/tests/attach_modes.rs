//! Both ways of attaching to tc hooks, whatever mode the other kernel tests run in: legacy tc
//! (kernels 5.10 to 6.5) puts cls_bpf filters on a clsact qdisc that enforce like TCX links,
//! survive their process, and go with detach and destroy; a datapath pinned in one mode is not
//! adopted in the other.
mod support;

use aya::programs::{SchedClassifier, TcAttachType};
use palisade_common::*;
use palisade_datapath::{AttachMode, Datapath, Error, Slot};
use support::*;

/// `tc filter show` of one hook of `ifname`, in the caller's namespace.
fn tc_filters(node: &str, ifname: &str, hook: &str) -> String {
    let output = std::process::Command::new("tc")
        .args(["-n", node, "filter", "show", "dev", ifname, hook])
        .output()
        .expect("run tc");
    assert!(output.status.success(), "tc filter show: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tcx_programs(ifname: &str) -> usize {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .map(|hook| SchedClassifier::query_tcx(ifname, hook).map_or(0, |(_, programs)| programs.len()))
        .sum()
}

#[test]
fn legacy_tc_filters_enforce_outlive_their_process_and_go_with_detach() {
    let topology = Topology::new("pam", 2, false, 200);
    let _inside = InNetns::enter(&topology.node);
    let (client, server) = (&topology.endpoints[0], &topology.endpoints[1]);
    let mut datapath = Datapath::open_with(&topology.pin_dir, Some(AttachMode::Tc)).expect("open in tc mode");
    assert_eq!(datapath.attach_mode(), AttachMode::Tc);
    let allow_egress =
        entry(PolicyKey::new(IDENTITY_ANY, Direction::Egress, None, 0, 0), PolicyValue::new(Verdict::Allow, 1));
    datapath.set_ipcache(client.addr, 32, IDENTITY_FIRST_LOCAL).unwrap();
    datapath.set_ipcache(server.addr, 32, IDENTITY_FIRST_LOCAL + 1).unwrap();
    datapath.load_slot(0, Slot::A, &[allow_egress]).unwrap();
    // The server allows nothing in: default deny.
    datapath.load_slot(1, Slot::A, &[]).unwrap();
    for (id, endpoint) in topology.endpoints.iter().enumerate() {
        datapath.attach(id as u32, &endpoint.host_if, endpoint.addrs()).unwrap();
    }

    let egress = tc_filters(&topology.node, &server.host_if, "egress");
    let ingress = tc_filters(&topology.node, &server.host_if, "ingress");
    // The host's programs first (priority 1), then deferred_egress and to_endpoint on egress,
    // from_endpoint on ingress.
    assert!(egress.contains("pref 1 bpf chain 0 handle 0x1 from_host direct-action"), "{egress}");
    assert!(egress.contains("pref 2 bpf chain 0 handle 0x2 deferred_egress direct-action"), "{egress}");
    assert!(egress.contains("pref 3 bpf chain 0 handle 0x3 to_endpoint direct-action"), "{egress}");
    assert!(ingress.contains("pref 1 bpf chain 0 handle 0x4 to_host direct-action"), "{ingress}");
    assert!(ingress.contains("pref 2 bpf chain 0 handle 0x5 from_endpoint direct-action"), "{ingress}");
    assert_eq!(tcx_programs(&server.host_if), 0, "nothing attached with TCX");
    assert!(!tcp_ok(&client.ns, server.addr, 80), "the server's default deny is enforced");
    tcp_echo_servers(&server.ns, &[80]);
    datapath
        .load_slot(
            1,
            Slot::A,
            &[entry(
                PolicyKey::new(IDENTITY_FIRST_LOCAL, Direction::Ingress, Some(Protocol::TCP), 80, 16),
                PolicyValue::new(Verdict::Allow, 2),
            )],
        )
        .unwrap();
    assert!(tcp_ok(&client.ns, server.addr, 80), "allowed once the policy says so");
    assert!(!ping_ok(&client.ns, server.addr), "ICMP still denied");

    // The filters hold no process: a new handle adopts them, in the pinned mode.
    drop(datapath);
    assert!(!ping_ok(&client.ns, server.addr), "enforced while no process holds the datapath");
    let mut datapath = Datapath::open(&topology.pin_dir).expect("adopt");
    assert_eq!(datapath.attach_mode(), AttachMode::Tc);
    assert_eq!(
        datapath.attach(1, &server.host_if, server.addrs()).map_err(|e| e.to_string()),
        Ok(()),
        "re-attaching to the same interface is a no-op"
    );

    // An attach interrupted before its record was written left its filter: the next one replaces it.
    std::fs::remove_dir_all(topology.pin_dir.join("links/1-to_endpoint")).unwrap();
    datapath.attach(1, &server.host_if, server.addrs()).expect("attach over a filter without a record");
    let egress = tc_filters(&topology.node, &server.host_if, "egress");
    assert_eq!(egress.matches("handle 0x3 to_endpoint").count(), 1, "{egress}");
    assert!(!ping_ok(&client.ns, server.addr), "still enforced");

    // Detached, the interface stays judged as a node interface's, without a gap.
    datapath.detach(1).unwrap();
    let egress = tc_filters(&topology.node, &server.host_if, "egress");
    let ingress = tc_filters(&topology.node, &server.host_if, "ingress");
    assert!(egress.contains("deferred_egress") && !egress.contains("to_endpoint"), "{egress}");
    assert!(ingress.contains("from_network") && !ingress.contains("from_endpoint"), "{ingress}");
    assert!(ping_ok(&client.ns, server.addr), "a detached endpoint is not judged");

    datapath.destroy().unwrap();
    for (ifname, hook) in [
        (&client.host_if, "ingress"),
        (&client.host_if, "egress"),
        (&server.host_if, "ingress"),
        (&server.host_if, "egress"),
    ] {
        let filters = tc_filters(&topology.node, ifname, hook);
        assert!(!filters.contains("bpf"), "destroy removes every filter: {ifname} {hook}: {filters}");
    }
    assert!(!topology.pin_dir.exists());
}

#[test]
fn a_datapath_pinned_in_one_attach_mode_is_not_adopted_in_the_other() {
    let topology = Topology::new("pao", 1, false, 204);
    let _inside = InNetns::enter(&topology.node);
    let endpoint = &topology.endpoints[0];
    let mut datapath = Datapath::open_with(&topology.pin_dir, Some(AttachMode::Tc)).unwrap();
    datapath.load_slot(0, Slot::A, &[]).unwrap();
    datapath.attach(0, &endpoint.host_if, endpoint.addrs()).unwrap();
    drop(datapath);

    let error = Datapath::open_with(&topology.pin_dir, Some(AttachMode::Tcx)).err().expect("refused");
    assert!(
        matches!(error, Error::AttachModeMismatch { pinned: AttachMode::Tc, requested: AttachMode::Tcx, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("attached with tc, not tcx"), "{error}");
    assert!(tc_filters(&topology.node, &endpoint.host_if, "ingress").contains("bpf"), "left attached");
    let datapath = Datapath::open_with(&topology.pin_dir, Some(AttachMode::Tc)).unwrap();
    datapath.destroy().unwrap();
}
