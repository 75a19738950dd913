//! Restart: a first agent process sets everything up and exits; a second one adopts the pinned
//! state. Pings through an allowed and a denied pair keep their verdict the whole time.
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use palisade_common::*;
use palisade_datapath::{Datapath, Slot};
use support::*;

const FIRST_AGENT_ENV: &str = "PALISADE_TEST_FIRST_AGENT";

/// The first agent, run as a child process by `enforcement_survives_an_agent_restart` (with
/// `--ignored --exact`); ignored otherwise, so that it never passes without doing anything.
/// Argument: node namespace, pin dir, then `ifname=addr` per endpoint. (Not `ip netns exec`: it
/// remounts /sys, hiding bpffs.)
#[test]
#[ignore = "a helper process: enforcement_survives_an_agent_restart runs it"]
fn first_agent_process() {
    let Ok(args) = std::env::var(FIRST_AGENT_ENV) else {
        return;
    };
    let mut args = args.split(' ');
    let _inside = InNetns::enter(args.next().unwrap());
    let mut datapath = open_datapath(args.next().unwrap());
    let endpoints: Vec<(String, std::net::Ipv4Addr)> = args
        .map(|arg| {
            let (ifname, addr) = arg.split_once('=').unwrap();
            (ifname.to_owned(), addr.parse().unwrap())
        })
        .collect();
    let pinger = IDENTITY_FIRST_LOCAL;
    let policies = [
        vec![entry(PolicyKey::new(IDENTITY_ANY, Direction::Egress, None, 0, 0), PolicyValue::new(Verdict::Allow, 1))],
        vec![entry(
            PolicyKey::new(pinger, Direction::Ingress, Some(Protocol::ICMP), 8, 16),
            PolicyValue::new(Verdict::Allow, 2),
        )],
        vec![],
    ];
    for (i, ((ifname, addr), policy)) in endpoints.iter().zip(policies).enumerate() {
        datapath.set_ipcache(*addr, 32, pinger + i as u32).unwrap();
        datapath.load_slot(i as u32, Slot::A, &policy).unwrap();
        datapath.attach(i as u32, ifname, *addr).unwrap();
    }
    println!("READY");
    // Run until the parent closes stdin, then exit without cleaning up, like a killed agent.
    let _ = std::io::stdin().lines().count();
}

#[test]
fn enforcement_survives_an_agent_restart() {
    let topology = Topology::new("pdr", 3, false, 90);
    let mut args = vec![topology.node.clone(), topology.pin_dir.display().to_string()];
    args.extend(topology.endpoints.iter().map(|e| format!("{}={}", e.host_if, e.addr)));
    let mut first_agent = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "first_agent_process", "--nocapture", "--test-threads=1"])
        .env(FIRST_AGENT_ENV, args.join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the first agent");
    let mut stdout = BufReader::new(first_agent.stdout.take().unwrap()).lines();
    assert!(stdout.any(|line| line.is_ok_and(|l| l.contains("READY"))), "the first agent did not come up");

    let stop = Arc::new(AtomicBool::new(false));
    let pinger_ns = topology.endpoints[0].ns.clone();
    let pingers: Vec<_> = [topology.endpoints[1].addr, topology.endpoints[2].addr]
        .into_iter()
        .map(|to| {
            let (stop, mut pinger) = (stop.clone(), Pinger::new(&pinger_ns, to));
            thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(pinger.ping(Duration::from_millis(50)));
                    thread::sleep(Duration::from_millis(10));
                }
                answers
            })
        })
        .collect();
    let stop_guard = StopOnDrop(stop);

    thread::sleep(Duration::from_millis(300));
    drop(first_agent.stdin.take());
    assert!(first_agent.wait().unwrap().success(), "the first agent failed");
    thread::sleep(Duration::from_millis(300));

    let _inside = InNetns::enter(&topology.node);
    let mut second_agent = topology.datapath();
    let before = second_agent.counters(1).unwrap();
    assert!(before.allowed > 0, "the adopted maps keep their counters: {before:?}");
    assert_eq!(second_agent.endpoints().unwrap().len(), 3);
    thread::sleep(Duration::from_millis(300));
    // The adopted state is under control: allow the denied pair now.
    assert!(second_agent.counters(1).unwrap().allowed > before.allowed, "still enforcing after adoption");
    drop(stop_guard);
    let answers: Vec<Vec<bool>> = pingers.into_iter().map(|p| p.join().unwrap()).collect();
    assert!(answers[0].len() > 20 && answers[0].iter().all(|&ok| ok), "allowed pair lost pings: {:?}", answers[0]);
    assert!(answers[1].len() > 8 && answers[1].iter().all(|&ok| !ok), "denied pair got through: {:?}", answers[1]);

    second_agent
        .load_slot(
            2,
            Slot::B,
            &[entry(
                PolicyKey::new(IDENTITY_ANY, Direction::Ingress, Some(Protocol::ICMP), 8, 16),
                PolicyValue::new(Verdict::Allow, 3),
            )],
        )
        .unwrap();
    second_agent.set_candidate(2, Some(Slot::B)).unwrap();
    second_agent.flip(2).unwrap();
    assert!(ping_ok(&topology.endpoints[0].ns, topology.endpoints[2].addr), "the second agent controls the datapath");
    second_agent.destroy().unwrap();
}

/// Another build may lay out its maps differently: it refuses to adopt them, says so, and leaves
/// them (and the enforcement they hold) alone.
#[test]
fn a_datapath_pinned_by_another_build_is_refused_and_left_running() {
    let topology = Topology::new("pdo", 2, false, 94);
    let _inside = InNetns::enter(&topology.node);
    let mut datapath = topology.datapath();
    datapath.load_slot(1, Slot::A, &[]).unwrap();
    datapath.attach(1, &topology.endpoints[1].host_if, topology.endpoints[1].addr).unwrap();
    drop(datapath);
    let object = topology.pin_dir.join("object");
    std::fs::remove_dir_all(&object).unwrap();
    std::fs::create_dir_all(object.join("0123abcd")).unwrap();

    let error = Datapath::open(&topology.pin_dir).err().expect("refused");
    assert!(matches!(error, palisade_datapath::Error::PinnedByAnotherBuild { ref pinned, .. } if pinned == "0123abcd"));
    assert!(error.to_string().contains("another build"), "{error}");
    assert!(!ping_ok(&topology.endpoints[0].ns, topology.endpoints[1].addr), "still enforced by the pinned build");
    assert!(topology.pin_dir.join("maps/ENDPOINTS").exists(), "nothing was unpinned");
}
