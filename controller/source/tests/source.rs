mod common;

use std::path::Path;

use common::*;
use palisade_source::{
    Credentials, FailureKind, GitRef, Keys, Outcome, Revision, Source, SourceSpec, Verify, VerifyMode,
};

fn source(url: &str, reference: GitRef, cache: &Path) -> Source {
    open(url, reference, cache, |_| {})
}

/// A source for `reference` of `url`, with `settings` applied to its spec.
fn open(url: &str, reference: GitRef, cache: &Path, settings: impl FnOnce(&mut SourceSpec)) -> Source {
    let mut spec = SourceSpec::new(url, reference);
    settings(&mut spec);
    Source::open(spec, Credentials::default(), cache).unwrap()
}

fn sync(source: &Source) -> Outcome {
    source.sync(&mut |_| {}).unwrap()
}

fn revision(source: &Source) -> Revision {
    match sync(source) {
        Outcome::Revision(r) => r,
        Outcome::Failed(f) => panic!("expected a revision, got {:?}: {:?}", f.kind, f.problems),
    }
}

/// Every problem of a failed attempt, one per line.
fn failure(source: &Source, kind: FailureKind) -> String {
    match sync(source) {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, kind, "{:?}", f.problems);
            f.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        }
        Outcome::Revision(r) => panic!("expected a failed attempt, got revision {}", r.id),
    }
}

#[test]
fn branch_tag_semver_and_commit_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    repo.write("policies/web.yaml", &policy("web", 80));
    let first = repo.commit("web", &[]);
    repo.git(&["tag", "v1.0.0"]);
    repo.write("policies/db.yaml", &policy("db", 5432));
    let second = repo.commit("db", &[]);
    repo.git(&["tag", "-a", "v1.2.0", "-m", "release 1.2"]);
    repo.git(&["checkout", "-q", "-b", "next"]);
    repo.write("policies/cache.yaml", &policy("cache", 6379));
    let third = repo.commit("cache", &[]);
    repo.git(&["tag", "v2.0.0-rc.1"]);
    repo.git(&["tag", "not-a-version"]);
    let cache = tmp.path().join("cache");

    let main = revision(&source(&repo.url(), GitRef::Branch("main".into()), &cache));
    assert_eq!(main.commit.id, second);
    assert_eq!(main.reference, format!("main@sha1:{second}"));
    assert_eq!(main.commit.author, "Alice <alice@example.com>");
    assert_eq!(main.commit.message, "db");
    assert_eq!(main.policies.policies.len(), 2);
    assert_eq!(revision(&source(&repo.url(), GitRef::Branch("next".into()), &cache)).commit.id, third);
    assert_eq!(revision(&source(&repo.url(), GitRef::Tag("v1.0.0".into()), &cache)).commit.id, first);
    // An annotated tag resolves to the commit it tags.
    assert_eq!(revision(&source(&repo.url(), GitRef::Tag("v1.2.0".into()), &cache)).commit.id, second);
    // Highest match; pre-releases only when the range asks for them.
    assert_eq!(revision(&source(&repo.url(), GitRef::Semver(">=1.0.0".into()), &cache)).commit.id, second);
    assert_eq!(revision(&source(&repo.url(), GitRef::Semver("~1.0".into()), &cache)).commit.id, first);
    assert_eq!(revision(&source(&repo.url(), GitRef::Semver(">=2.0.0-rc.0".into()), &cache)).commit.id, third);
    assert_eq!(revision(&source(&repo.url(), GitRef::Commit(first.clone()), &cache)).commit.id, first);
    assert_eq!(revision(&source(&repo.url(), GitRef::Head, &cache)).commit.id, third);

    let err = source(&repo.url(), GitRef::Branch("nope".into()), &cache).sync(&mut |_| {}).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: branch nope not found", repo.url()));
    let err = source(&repo.url(), GitRef::Semver(">=3".into()), &cache).sync(&mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("no tag matches the semver range >=3"), "{err}");
    let err = source(&repo.url(), GitRef::Commit("0".repeat(40)), &cache).sync(&mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn incremental_fetch_force_push_and_revert() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    for i in 0..20 {
        repo.write(&format!("policies/p{i}.yaml"), &policy(&format!("p{i}"), 8000 + i));
    }
    repo.commit("many", &[]);
    let cache = tmp.path().join("cache");
    let source = source(&repo.url(), GitRef::Branch("main".into()), &cache);
    let mut first_objects = 0;
    source.sync(&mut |p| first_objects = p.received_objects).unwrap();
    let original = revision(&source);

    // One changed file: only the new commit, its trees and the one blob travel.
    repo.write("policies/p3.yaml", &policy("p3", 9999));
    let changed = repo.commit("change p3", &[]);
    let mut objects = 0;
    let Outcome::Revision(after) = source.sync(&mut |p| objects = p.received_objects).unwrap() else { panic!() };
    assert_eq!(after.commit.id, changed);
    assert_ne!(after.id, original.id);
    assert!(objects < 6 && first_objects > 20, "first fetch {first_objects} objects, then {objects}");

    // A revert restores the content, so the revision id is the original one.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let reverted = revision(&source);
    assert_ne!(reverted.commit.id, original.commit.id);
    assert_eq!(reverted.id, original.id);

    // Force-push: history rewritten to a commit that does not descend from the fetched one.
    repo.git(&["reset", "-q", "--hard", "HEAD~2"]);
    repo.write("policies/extra.yaml", &policy("extra", 7000));
    let rewritten = repo.commit("rewritten", &[]);
    let forced = revision(&source);
    assert_eq!(forced.commit.id, rewritten);
    assert_eq!(forced.policies.policies.len(), 21);
}

#[test]
fn invalid_policy_lists_every_error_and_makes_no_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    repo.write("a.yaml", &policy("a", 80).replace("\"80\"", "\"99999\""));
    repo.write("b.yaml", &policy("b", 80).replace("protocol: TCP", "protocol: TCPX"));
    repo.write("README.md", "not a policy");
    repo.commit("bad", &[]);
    let cache = tmp.path().join("cache");
    let source = source(&repo.url(), GitRef::Branch("main".into()), &cache);
    let problems = failure(&source, FailureKind::Invalid);
    assert!(problems.contains("a.yaml:") && problems.contains("b.yaml:"), "{problems}");
    assert!(problems.contains("spec.ingress[0].toPorts[0].ports[0]"), "{problems}");
    assert!(source.last_revision().unwrap().is_none());
}

#[test]
fn path_ignore_and_symlinks_inside_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    repo.write("policies/web.yaml", &policy("web", 80));
    repo.write("policies/drafts/wip.yaml", "this: [is not valid");
    repo.write("policies/skip-me.yaml", "also: [broken");
    repo.write("other/unrelated.yaml", "not: [a policy");
    repo.write("shared/db.yaml", &policy("db", 5432));
    // Read through the link under the link's name; the target's own name is not a YAML file.
    repo.write("policies/lib/db.policy", &policy("db", 5432));
    repo.symlink("lib/db.policy", "policies/db-link.yaml");
    repo.write(".palisadeignore", "drafts/\n");
    repo.commit("layout", &[]);
    let source = open(&repo.url(), GitRef::Branch("main".into()), &tmp.path().join("cache"), |spec| {
        spec.path = "policies".into();
        spec.ignore = "skip-*.yaml\n".into();
    });
    let revision = revision(&source);
    let files: Vec<&str> = revision.policies.policies.iter().map(|p| p.file.as_str()).collect();
    assert_eq!(files, ["policies/db-link.yaml", "policies/web.yaml"]);
}

#[test]
fn symlink_leaving_the_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    repo.write("policies/web.yaml", &policy("web", 80));
    repo.write("secrets/token.yaml", &policy("secret", 1));
    repo.symlink("../secrets/token.yaml", "policies/escape.yaml");
    repo.symlink("/etc/passwd.yaml", "policies/absolute.yaml");
    repo.commit("escape", &[]);
    let source = open(&repo.url(), GitRef::Branch("main".into()), &tmp.path().join("cache"), |spec| {
        spec.path = "policies".into()
    });
    let problems = failure(&source, FailureKind::Invalid);
    assert!(
        problems.contains("policies/escape.yaml: symlink to \"../secrets/token.yaml\" leaves \"policies\""),
        "{problems}"
    );
    assert!(problems.contains("policies/absolute.yaml: symlink to \"/etc/passwd.yaml\" leaves"), "{problems}");
}

#[test]
fn yaml_bomb_and_oversized_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, prev) in ('b'..='j').zip('a'..='i') {
        bomb.push_str(&format!(
            "{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    repo.write("bomb.yaml", &bomb);
    repo.write("deep.yaml", &format!("{}x{}", "[".repeat(500), "]".repeat(500)));
    repo.write("big.yaml", &format!("# {}\n", "x".repeat(5 << 20)));
    repo.commit("hostile", &[]);
    let cache = tmp.path().join("cache");
    let started = std::time::Instant::now();
    let source = source(&repo.url(), GitRef::Branch("main".into()), &cache);
    let problems = failure(&source, FailureKind::Invalid);
    assert!(problems.contains("big.yaml: 5242883 bytes exceed the limit"), "{problems}");
    // The size check comes first, so the bomb and the nesting are reported on the next attempt.
    assert!(started.elapsed().as_secs() < 10);
    repo.git(&["rm", "-q", "big.yaml"]);
    repo.commit("smaller", &[]);
    let problems = failure(&source, FailureKind::Invalid);
    assert!(problems.contains("bomb.yaml:") && problems.contains("deep.yaml:"), "{problems}");
}

#[test]
fn git_daemon_unreachable_keeps_the_last_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    repo.write("web.yaml", &policy("web", 80));
    let commit = repo.commit("web", &[]);
    let mut daemon = GitDaemon::start(tmp.path());
    let cache = tmp.path().join("cache");
    let source = source(&daemon.url("repo"), GitRef::Branch("main".into()), &cache);
    let served = revision(&source);
    assert_eq!(served.commit.id, commit);

    // More commits over git:// arrive incrementally.
    repo.write("db.yaml", &policy("db", 5432));
    let next = repo.commit("db", &[]);
    let latest = revision(&source);
    assert_eq!(latest.commit.id, next);

    daemon.stop();
    let err = source.sync(&mut |_| {}).unwrap_err();
    assert!(matches!(err, palisade_source::Error::Fetch { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!("git://127.0.0.1:{}/repo: could not fetch", daemon.port)), "{err}");
    let last = source.last_revision().unwrap().expect("the last revision from the cache");
    assert_eq!((last.id, last.commit.id), (latest.id, next));
}

fn verifying(url: &str, reference: GitRef, mode: VerifyMode, keys: &str, cache: &Path) -> Source {
    open(url, reference, cache, |spec| spec.verify = Some(Verify { mode, keys: Keys::parse(keys).unwrap() }))
}

#[test]
fn ssh_signatures_on_commits_and_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let (alice_key, alice) = ssh_key(tmp.path(), "alice@example.com");
    let (mallory_key, mallory) = ssh_key(tmp.path(), "mallory@example.com");
    let repo = Repo::new(tmp.path());
    repo.git(&["config", "gpg.format", "ssh"]);
    let sign = |key: &Path| format!("user.signingkey={}", key.display());
    repo.write("web.yaml", &policy("web", 80));
    repo.commit("signed", &["-S", &format!("--gpg-sign={}", alice_key.display())]);
    repo.git(&["-c", &sign(&alice_key), "tag", "-s", "v1.0.0", "-m", "signed tag"]);
    repo.git(&["tag", "-a", "v1.1.0", "-m", "unsigned tag"]);
    let cache = tmp.path().join("cache");
    let main = GitRef::Branch("main".into());

    let ok = revision(&verifying(&repo.url(), main.clone(), VerifyMode::Head, &alice, &cache));
    let palisade_source::SignatureStatus::Verified { provider, signer } = &ok.signature else {
        panic!("{:?}", ok.signature)
    };
    assert_eq!(provider, "ssh");
    assert!(signer.starts_with("alice@example.com SHA256:"), "{signer}");
    let tag = revision(&verifying(&repo.url(), GitRef::Tag("v1.0.0".into()), VerifyMode::TagAndHEAD, &alice, &cache));
    assert_eq!(tag.commit.id, ok.commit.id);
    let problems = failure(
        &verifying(&repo.url(), GitRef::Tag("v1.1.0".into()), VerifyMode::Tag, &alice, &cache),
        FailureKind::Unverified,
    );
    assert!(problems.contains("is not signed"), "{problems}");
    let problems =
        failure(&verifying(&repo.url(), main.clone(), VerifyMode::Tag, &alice, &cache), FailureKind::Unverified);
    assert!(problems.contains("not an annotated tag"), "{problems}");

    // Signed, but by a key that is not allowed.
    repo.write("db.yaml", &policy("db", 5432));
    repo.commit("by mallory", &[&format!("--gpg-sign={}", mallory_key.display())]);
    let source = verifying(&repo.url(), main.clone(), VerifyMode::Head, &alice, &cache);
    let problems = failure(&source, FailureKind::Unverified);
    assert!(problems.contains("which is not an allowed signer"), "{problems}");
    // The same commit passes when mallory is allowed too.
    revision(&verifying(&repo.url(), main.clone(), VerifyMode::Head, &format!("{alice}{mallory}"), &cache));

    repo.write("cache.yaml", &policy("cache", 6379));
    let unsigned = repo.commit("unsigned", &[]);
    let problems = failure(&source, FailureKind::Unverified);
    assert_eq!(problems, format!("commit {unsigned} is not signed"));
    // Nothing unverified became the last revision.
    assert!(source.last_revision().unwrap().is_none());
}

#[test]
fn openpgp_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, fingerprint, armored) = gpg_key(tmp.path(), "alice");
    let _agent = GpgAgent(home.clone());
    let (other_home, _, other_armored) = gpg_key(tmp.path(), "other");
    let _other_agent = GpgAgent(other_home);
    let mut repo = Repo::new(tmp.path());
    repo.set_env("GNUPGHOME", home.to_str().unwrap());
    repo.write("web.yaml", &policy("web", 80));
    repo.commit("signed", &[&format!("--gpg-sign={fingerprint}")]);
    let cache = tmp.path().join("cache");
    let main = GitRef::Branch("main".into());

    let ok = revision(&verifying(&repo.url(), main.clone(), VerifyMode::Head, &armored, &cache));
    let palisade_source::SignatureStatus::Verified { provider, signer } = &ok.signature else { panic!() };
    assert_eq!(provider, "openpgp");
    assert_eq!(signer, &format!("alice <alice@example.com> {fingerprint}"));

    let problems = failure(
        &verifying(&repo.url(), main.clone(), VerifyMode::Head, &other_armored, &cache),
        FailureKind::Unverified,
    );
    assert!(problems.contains("does not verify with any given key"), "{problems}");

    // A signature over different content: the signed commit with its message changed.
    let tampered = repo.git(&["cat-file", "commit", "HEAD"]).replace("\nsigned", "\ntampered") + "\n";
    let file = tmp.path().join("tampered");
    std::fs::write(&file, tampered).unwrap();
    let id = repo.git(&["hash-object", "-t", "commit", "-w", file.to_str().unwrap()]);
    repo.git(&["update-ref", "refs/heads/main", &id]);
    let problems = failure(&verifying(&repo.url(), main, VerifyMode::Head, &armored, &cache), FailureKind::Unverified);
    assert!(problems.contains(&format!("commit {id}: the OpenPGP signature")), "{problems}");
}

#[test]
fn a_policy_defined_in_two_files_is_refused_even_when_one_was_parsed_before() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new(tmp.path());
    repo.write("a.yaml", &policy("web", 80));
    repo.commit("one", &[]);
    let cache = tmp.path().join("cache");
    let source = source(&repo.url(), GitRef::Branch("main".into()), &cache);
    let first = revision(&source);
    assert_eq!(first.id, palisade_source::revision::digest(&first.policies));
    repo.write("b.yaml", &policy("web", 443));
    repo.commit("two", &[]);
    let problems = failure(&source, FailureKind::Invalid);
    assert_eq!(problems, "b.yaml:1: metadata.name: CiliumNetworkPolicy default/web is defined more than once");
    repo.git(&["rm", "-q", "b.yaml"]);
    repo.commit("three", &[]);
    assert_eq!(revision(&source).id, first.id);
}
