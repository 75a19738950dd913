//! `palisade source fetch`: fetch a Git source once, the way the controller does, and show the
//! revision it makes or every reason it makes none.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use palisade_source::{
    Credentials, GitRef, Keys, Outcome, Problem, SignatureStatus, Source, SourceSpec, Verify, VerifyMode,
};
use serde_json::json;

use super::Output;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SourceCommand,
}

#[derive(clap::Subcommand)]
enum SourceCommand {
    /// Fetch a repository, verify and read its policies; print the revision or every error.
    /// Exit 0: a revision; 1: invalid or unverified, no revision; 2: could not fetch.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("ref").multiple(false)))]
pub struct FetchArgs {
    /// file://, a path, git://, https:// or ssh://.
    #[arg(long)]
    url: String,
    #[arg(long, group = "ref")]
    branch: Option<String>,
    #[arg(long, group = "ref")]
    tag: Option<String>,
    /// The highest tag matching this semver range, e.g. ">=1.2, <2".
    #[arg(long, group = "ref")]
    semver: Option<String>,
    #[arg(long, group = "ref")]
    commit: Option<String>,
    /// Directory in the repository holding the policies.
    #[arg(long, default_value = "")]
    path: String,
    /// An SSH allowed-signers file or an armored OpenPGP public key file; HEAD must be signed.
    #[arg(long)]
    verify_keys: Option<PathBuf>,
    /// Files named username, password, bearerToken, identity, known_hosts.
    #[arg(long)]
    secret_dir: Option<PathBuf>,
    /// Where mirrors are kept between runs [default: $XDG_CACHE_HOME/palisade/git].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit codes of `source fetch`.
const REVISION: u8 = 0;
const NO_REVISION: u8 = 1;
const NOT_FETCHED: u8 = 2;

pub fn run(args: Args) -> Result<u8> {
    match args.command {
        SourceCommand::Fetch(args) => fetch(args),
    }
}

fn fetch(args: FetchArgs) -> Result<u8> {
    let reference =
        GitRef::first_of(args.branch.as_deref(), args.tag.as_deref(), args.semver.as_deref(), args.commit.as_deref());
    let mut spec = SourceSpec::new(&args.url, reference);
    spec.path = args.path.clone();
    spec.timeout = Duration::from_secs(args.timeout);
    if let Some(path) = &args.verify_keys {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let keys = Keys::parse(&text).with_context(|| path.display().to_string())?;
        spec.verify = Some(Verify { mode: VerifyMode::Head, keys });
    }
    let credentials = match &args.secret_dir {
        Some(dir) => Credentials::from_dir(dir)?,
        None => Credentials::default(),
    };
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let source = Source::open(spec, credentials, &cache_dir)?;

    let bar = Bar::new();
    let result = source.sync(&mut |p| bar.update(p));
    bar.finish();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            // The controller keeps enforcing the last revision; say that it is still there.
            if let Ok(Some(last)) = source.last_revision() {
                eprintln!("last revision {} (commit {}) is still available from the cache", last.id, last.commit.id);
            }
            let problem = Problem::commit(e.to_string());
            print(args.output, None, None, false, &[], &[problem]);
            return Ok(NOT_FETCHED);
        }
    };
    Ok(match outcome {
        Outcome::Revision(revision) => {
            let verified = matches!(revision.signature, SignatureStatus::Verified { .. });
            let policies: Vec<_> = revision
                .policies
                .policies
                .iter()
                .map(|p| json!({"kind": p.id.kind.as_str(), "namespace": p.id.namespace, "name": p.id.name, "file": p.file}))
                .collect();
            if args.output == Output::Text {
                if let SignatureStatus::Verified { provider, signer } = &revision.signature {
                    println!("signed by {signer} ({provider})");
                }
                for warning in &revision.warnings {
                    eprintln!("{warning}");
                }
            }
            print(args.output, Some(&revision.commit.id), Some(&revision.id), verified, &policies, &[]);
            REVISION
        }
        Outcome::Failed(failed) => {
            print(args.output, Some(&failed.commit.id), None, false, &[], &failed.problems);
            NO_REVISION
        }
    })
}

fn print(
    output: Output,
    commit: Option<&str>,
    revision: Option<&str>,
    verified: bool,
    policies: &[serde_json::Value],
    errors: &[Problem],
) {
    match output {
        Output::Json => {
            let report = json!({
                "commit": commit,
                "revision": revision,
                "verified": verified,
                "policies": policies,
                "errors": errors,
            });
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        }
        Output::Text => {
            if let Some(commit) = commit {
                println!("commit    {commit}");
            }
            if let Some(revision) = revision {
                println!("revision  {revision}{}", if verified { " (verified)" } else { "" });
            }
            for p in policies {
                let name = match p["namespace"].as_str() {
                    Some(ns) => format!("{ns}/{}", p["name"].as_str().unwrap_or_default()),
                    None => p["name"].as_str().unwrap_or_default().to_string(),
                };
                println!(
                    "  {} {name}  ({})",
                    p["kind"].as_str().unwrap_or_default(),
                    p["file"].as_str().unwrap_or_default()
                );
            }
            for e in errors {
                println!("error: {e}");
            }
        }
    }
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("palisade").join("git")
}

/// A progress bar on stderr that appears only once a fetch has taken more than a moment, so quick
/// incremental fetches print nothing.
struct Bar {
    bar: ProgressBar,
    started: Instant,
}

const SHOW_AFTER: Duration = Duration::from_millis(500);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{spinner} fetching {pos}/{len} objects, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Bar { bar, started: Instant::now() }
    }

    fn update(&self, p: palisade_source::Progress) {
        if self.bar.is_hidden() && self.started.elapsed() > SHOW_AFTER {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        self.bar.set_length(p.total_objects as u64);
        self.bar.set_position(p.received_objects as u64);
        self.bar.set_message(format!("{} KiB", p.received_bytes / 1024));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
