//! Drives local mode the way a user does: `palisade local up`, `palisade local run` as a child
//! process, commits to a real Git repository, `palisade local probe` for real connections. Each
//! test has its own namespace prefix, state directory and bpffs pin directory, and removes them
//! all when it ends, also when it fails. Needs root: it fails loudly without it.
#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade::local::store::Store;
use palisade_agent::observe::ObservedFlow;
use palisade_rollout::crd::{PolicyRollout, PolicyRolloutStatus};

pub const PALISADE: &str = env!("CARGO_BIN_EXE_palisade");

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub fn require_root() {
    palisade_netsim::require_root().expect("end-to-end tests need root (network namespaces, eBPF): run them as root");
}

fn palisade(args: &[&str]) -> std::process::Output {
    Command::new(PALISADE).args(args).output().expect("run palisade")
}

/// A Git repository of policies, served to the rollout as a file:// URL.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let repo = Repo { dir: tempfile::tempdir().expect("tempdir") };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com", "-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run git");
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes `files` (name, content) and commits them; returns the short commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let path = self.dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.head()
    }

    /// Copies every YAML file of `dir` into the repository and commits.
    pub fn commit_dir(&self, dir: &Path, message: &str) -> String {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
        self.commit(&files, message)
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "--short=7", "HEAD"]).trim().to_owned()
    }
}

/// A rollout of `repo` named `name` in `namespace`, promoted automatically after `min_duration`.
pub fn rollout_yaml(namespace: &str, name: &str, repo: &Repo, min_duration: &str, extra: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1
kind: PolicyRollout
metadata:
  name: {name}
  namespace: {namespace}
spec:
  source:
    url: {url}
    ref:
      branch: main
    interval: 1s
  audit:
    minDuration: {min_duration}
    minFlowsPerEndpoint: 0
    maxNewDenies: 0
  promotion: Auto
  rollback:
    fastTrackReverts: true
{extra}",
        url = repo.url()
    )
}

/// One local cluster and, once started, its `palisade local run`.
pub struct LocalCluster {
    pub state: tempfile::TempDir,
    pub prefix: String,
    pub pin_dir: String,
    run: Option<Child>,
    rollout_file: PathBuf,
}

impl LocalCluster {
    pub fn up(prefix: &str, cluster: &Path) -> LocalCluster {
        require_root();
        let state = tempfile::tempdir().expect("tempdir");
        let pin_dir = format!("/sys/fs/bpf/palisade-e2e-{}", prefix.trim_end_matches('-'));
        let rollout_file = state.path().join("rollout.yaml");
        let local = LocalCluster { state, prefix: prefix.into(), pin_dir, run: None, rollout_file };
        let output = palisade(&[
            "local",
            "up",
            "--cluster",
            cluster.to_str().unwrap(),
            "--state",
            local.state_dir(),
            "--prefix",
            prefix,
        ]);
        assert!(output.status.success(), "local up: {}", String::from_utf8_lossy(&output.stderr));
        local
    }

    pub fn state_dir(&self) -> &str {
        self.state.path().to_str().unwrap()
    }

    /// Starts `palisade local run` with this rollout; its log goes to `run.log` in the state.
    pub fn run(&mut self, rollout: &str) {
        self.run_with(rollout, &[]);
    }

    /// [`Self::run`] with more flags (`--allow-localhost policy`). A log from an earlier run is
    /// replaced.
    pub fn run_with(&mut self, rollout: &str, flags: &[&str]) {
        std::fs::write(&self.rollout_file, rollout).unwrap();
        let log = std::fs::File::create(self.state.path().join("run.log")).unwrap();
        let child = Command::new(PALISADE)
            .args(["local", "run", "--state", self.state_dir(), "--pin-dir", &self.pin_dir])
            .args(["--report-interval", "500ms", "--traffic-interval", "200ms"])
            .args(flags)
            .arg("--rollout")
            .arg(&self.rollout_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start palisade local run");
        self.run = Some(child);
    }

    /// Kills `local run` without warning, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.run.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `palisade ARGS --local --state DIR`, as a person at the terminal: (success, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = palisade(&[args, &["--local", "--state", self.state_dir()]].concat());
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// The flows `palisade observe --local ARGS -o json` shows (the run's remembered ones, then
    /// new ones) once `enough` holds of them, or all it showed within `timeout`.
    pub fn observed(
        &self,
        args: &[&str],
        timeout: Duration,
        enough: impl Fn(&[ObservedFlow]) -> bool,
    ) -> Vec<ObservedFlow> {
        let mut child = Command::new(PALISADE)
            .args(["observe", "--local", "--state", self.state_dir(), "--last", "10000", "-o", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start palisade observe");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut flows = Vec::new();
        while !enough(&flows) {
            let Ok(line) = received.recv_timeout(deadline.saturating_duration_since(Instant::now())) else { break };
            flows.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("observe -o json: {e}: {line}")));
        }
        let _ = child.kill();
        let _ = child.wait();
        flows
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("run.log")).unwrap_or_default()
    }

    pub fn rollout(&self, namespace: &str, name: &str) -> Option<PolicyRollout> {
        Store::new(self.state.path()).rollout(namespace, name).expect("read the store")
    }

    /// Waits until the rollout's status satisfies `done`; fails with the log after `timeout`.
    pub fn wait(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&PolicyRolloutStatus) -> bool,
    ) -> PolicyRolloutStatus {
        let start = Instant::now();
        loop {
            let status = self.rollout(namespace, name).and_then(|r| r.status);
            if let Some(status) = status.as_ref().filter(|s| done(s)) {
                return status.clone();
            }
            if start.elapsed() > timeout {
                panic!("waited {timeout:?} for {what}; status: {status:#?}\nlog:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `reaches` comes to say `expected` within `timeout` (a change of what `local run`
    /// enforces takes effect when its agent has converged).
    pub fn eventually_reaches(&self, from: &str, to: &str, port: &str, expected: bool, timeout: Duration) -> bool {
        eventually(timeout, || self.reaches(from, to, port) == expected)
    }

    /// One real connection (`from` may be `node`, the node namespace): true when it got through
    /// (connected, or refused by the peer's stack, which it reached), false when it timed out
    /// (dropped).
    pub fn reaches(&self, from: &str, to: &str, port: &str) -> bool {
        self.probe(from, to, port).reached()
    }

    /// [`Self::reaches`] over IP family `family` (`4` or `6`).
    pub fn reaches_in(&self, family: &str, from: &str, to: &str, port: &str) -> bool {
        self.probe_in(family, from, to, port).reached()
    }

    /// `palisade local probe` once; `to` may be `svc/NAMESPACE/NAME`. Panics on an error (exit 2).
    pub fn probe(&self, from: &str, to: &str, port: &str) -> Probe {
        self.probe_in("4", from, to, port)
    }

    /// [`Self::probe`] with `--ip-family FAMILY` (`4` or `6`).
    pub fn probe_in(&self, family: &str, from: &str, to: &str, port: &str) -> Probe {
        let output = self.run_probe(family, from, to, port);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.code() {
            Some(code @ (0 | 1)) => Probe { connected: code == 0, stdout },
            _ => panic!("probe {from} -> {to} {port}: {}", String::from_utf8_lossy(&output.stderr)),
        }
    }

    /// The error of a probe that must be refused as bad input (exit 2).
    pub fn probe_error(&self, from: &str, to: &str, port: &str) -> String {
        self.probe_error_in("4", from, to, port)
    }

    /// [`Self::probe_error`] with `--ip-family FAMILY`.
    pub fn probe_error_in(&self, family: &str, from: &str, to: &str, port: &str) -> String {
        let output = self.run_probe(family, from, to, port);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "probe {from} -> {to} {port}: {stderr}");
        stderr
    }

    fn run_probe(&self, family: &str, from: &str, to: &str, port: &str) -> std::process::Output {
        self.local_probe(&["--from", from, "--to", to, "--port", port, "--timeout", "300ms", "--ip-family", family])
    }

    /// `palisade local probe ARGS` on this cluster, any flags (`--http`, `--dns`).
    pub fn local_probe(&self, args: &[&str]) -> std::process::Output {
        palisade(&[&["local", "probe", "--state", self.state_dir()], args].concat())
    }
}

/// What one `palisade local probe` printed.
#[derive(Debug)]
pub struct Probe {
    /// Exit 0.
    pub connected: bool,
    /// Its one line: `FROM -> TO ADDRESS:PORT[ -> BACKEND ADDRESS:PORT]: OUTCOME`.
    pub stdout: String,
}

impl Probe {
    /// Whether it got through: connected, or refused by the peer's stack (which it reached); not
    /// when it timed out (dropped) or was unreachable.
    pub fn reached(&self) -> bool {
        self.connected || !(self.stdout.contains("timed out") || self.stdout.contains("unreachable"))
    }

    pub fn refused(&self) -> bool {
        self.stdout.trim_end().ends_with(": refused")
    }

    pub fn timed_out(&self) -> bool {
        self.stdout.trim_end().ends_with(": timed out")
    }

    /// The pod that answered a probe of a Service (`NAMESPACE/POD`).
    pub fn answered_by(&self) -> Option<&str> {
        let backend = self.stdout.split(" -> ").nth(2).filter(|_| self.connected)?;
        backend.split([' ', ':']).next()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill();
        let _ = palisade(&["local", "down", "--state", self.state_dir()]);
        if let Ok(datapath) = palisade_datapath::Datapath::open(&self.pin_dir) {
            let _ = datapath.destroy();
        }
    }
}

/// Whether `ok` comes to hold within `timeout`, asked every 200 ms.
pub fn eventually(timeout: Duration, ok: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ok() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
