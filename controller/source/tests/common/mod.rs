//! Real repositories made with the git CLI, real signing keys made with ssh-keygen and gpg, and a
//! real `git daemon` on loopback. A missing tool fails the test with a message saying which.
#![allow(dead_code)] // each test binary uses its own part of these helpers

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn require(tool: &str) {
    let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    // ssh-keygen has no --version and exits non-zero, but it does start.
    let found = found || Command::new(tool).arg("-?").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(
        found,
        "`{tool}` is not installed: run `make deps` (scripts/deps.sh installs git, gnupg and openssh-client)"
    );
}

pub fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("`{program}` could not start ({e}): run `make deps`"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A work repository; its path (or `file://` URL) is what the source fetches.
pub struct Repo {
    pub dir: PathBuf,
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl Repo {
    pub fn new(base: &Path) -> Repo {
        require("git");
        let dir = base.join("repo");
        let home = base.join("home");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let env = [
            ("HOME", home.to_str().unwrap()),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_AUTHOR_NAME", "Alice"),
            ("GIT_AUTHOR_EMAIL", "alice@example.com"),
            ("GIT_COMMITTER_NAME", "Alice"),
            ("GIT_COMMITTER_EMAIL", "alice@example.com"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let repo = Repo { dir, home, env };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn git(&self, args: &[&str]) -> String {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&self.dir, "git", args, &env)
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    pub fn write(&self, path: &str, text: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn symlink(&self, target: &str, link: &str) {
        let link = self.dir.join(link);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str, extra: &[&str]) -> String {
        self.git(&["add", "-A"]);
        let mut args = vec!["commit", "-q", "--allow-empty", "-m", message];
        args.extend_from_slice(extra);
        self.git(&args);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A CiliumNetworkPolicy `name` in namespace `default` letting `app: client` reach `app: {name}`
/// on `port`.
pub fn policy(name: &str, port: u16) -> String {
    namespaced_policy("default", name, port)
}

pub fn namespaced_policy(namespace: &str, name: &str, port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  endpointSelector:
    matchLabels:
      app: {name}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: \"{port}\"
        protocol: TCP
"
    )
}

/// An ed25519 key made by ssh-keygen: (private key path, allowed-signers line).
pub fn ssh_key(dir: &Path, principal: &str) -> (PathBuf, String) {
    require("ssh-keygen");
    let key = dir.join(format!("{principal}-key"));
    run(dir, "ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", key.to_str().unwrap()], &[]);
    let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let mut fields = public.split_whitespace();
    let line = format!("{principal} {} {}\n", fields.next().unwrap(), fields.next().unwrap());
    (key, line)
}

/// A gpg key in its own GNUPGHOME: (GNUPGHOME, fingerprint, armored public key).
pub fn gpg_key(dir: &Path, name: &str) -> (PathBuf, String, String) {
    require("gpg");
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let env = [("GNUPGHOME", home.to_str().unwrap())];
    let uid = format!("{name} <{name}@example.com>");
    run(
        dir,
        "gpg",
        &[
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "ed25519",
            "sign",
            "never",
        ],
        &env,
    );
    let listing = run(dir, "gpg", &["--batch", "--with-colons", "--list-keys"], &env);
    let fingerprint = listing.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_string();
    let armored = run(dir, "gpg", &["--batch", "--armor", "--export", &fingerprint], &env);
    (home, fingerprint, armored)
}

/// Stops the gpg-agent a GNUPGHOME started, so tests leave no process behind.
pub struct GpgAgent(pub PathBuf);

impl Drop for GpgAgent {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").args(["--kill", "gpg-agent"]).env("GNUPGHOME", &self.0).status();
    }
}

/// `git daemon` serving `base` on 127.0.0.1; killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        require("git");
        let port = free_port();
        // `git daemon` would run git-daemon as a child that outlives a kill of `git` itself.
        let exec_path = run(base, "git", &["--exec-path"], &[]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon could not start: run `make deps`");
        let daemon = GitDaemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
