//! Reading policy files out of a commit's tree, without a checkout: only regular YAML files under
//! the path, symlinks followed only while they stay under it, and every file, count and total
//! bounded before its content is loaded.
use git2::{ObjectType, Oid, Repository, Tree};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::Problem;

/// The repository-wide ignore file, in .gitignore syntax (like Flux's `.sourceignore`).
pub const IGNORE_FILE: &str = ".palisadeignore";

/// Symlink chains longer than this are refused (git itself stops at 5 for refs; 8 is generous).
const MAX_SYMLINK_HOPS: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub max_file_bytes: usize,
    pub max_files: usize,
    pub max_total_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        // A file may be as large as the YAML parser accepts.
        let max_file_bytes = palisade_policy::yaml::Limits::default().max_bytes;
        ReadLimits { max_file_bytes, max_files: 10_000, max_total_bytes: 64 << 20 }
    }
}

pub struct ReadFile {
    /// Path from the repository root.
    pub name: String,
    /// The blob: same id, same text.
    pub id: Oid,
    pub text: String,
}

/// The YAML files under `path` (relative to the root, "" for all) in `tree`, sorted by path.
/// `extra_ignore` is the source's own patterns, added to the repository's `.palisadeignore`.
pub fn read_policy_files(
    repo: &Repository,
    tree: &Tree<'_>,
    path: &str,
    extra_ignore: &str,
    limits: &ReadLimits,
) -> Result<Vec<ReadFile>, Vec<Problem>> {
    let root = normalize(path).ok_or_else(|| vec![Problem::file(path, "the path leaves the repository")])?;
    let ignore = ignore_rules(repo, tree, extra_ignore).map_err(|p| vec![p])?;
    let start = if root.is_empty() {
        tree.clone()
    } else {
        let entry =
            tree.get_path(std::path::Path::new(&root)).map_err(|_| vec![Problem::file(&root, "no such directory")])?;
        match entry.kind() {
            Some(ObjectType::Tree) => {
                repo.find_tree(entry.id()).map_err(|e| vec![Problem::file(&root, e.message())])?
            }
            _ => return Err(vec![Problem::file(&root, "not a directory")]),
        }
    };
    let mut reader =
        Reader { repo, tree, root: &root, ignore: &ignore, limits, files: Vec::new(), problems: Vec::new(), total: 0 };
    reader.walk(&start, &root);
    if reader.problems.is_empty() {
        reader.files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(reader.files)
    } else {
        Err(reader.problems)
    }
}

fn ignore_rules(repo: &Repository, tree: &Tree<'_>, extra: &str) -> Result<IgnoreRules, Problem> {
    let file = match tree.get_name(IGNORE_FILE) {
        Some(entry) => {
            let blob = entry.to_object(repo).ok().and_then(|o| o.into_blob().ok());
            let text = blob.as_ref().and_then(|b| std::str::from_utf8(b.content()).ok().map(str::to_owned));
            Some(text.ok_or_else(|| Problem::file(IGNORE_FILE, "not a UTF-8 file"))?)
        }
        None => None,
    };
    IgnoreRules::new(file.as_deref(), extra)
}

/// What a tree of policy files leaves out: its root's `.palisadeignore` and, for a source, the
/// spec's `ignore` patterns, both in .gitignore syntax relative to the root. The Git source and
/// the CLI's directory walk both use it.
pub struct IgnoreRules(Gitignore);

impl IgnoreRules {
    /// `file`: the text of the root's `.palisadeignore`, if there is one; `extra`: more patterns.
    pub fn new(file: Option<&str>, extra: &str) -> Result<IgnoreRules, Problem> {
        let mut builder = GitignoreBuilder::new("");
        let mut add = |origin: &str, text: &str| -> Result<(), Problem> {
            for line in text.lines() {
                builder
                    .add_line(None, line)
                    .map_err(|e| Problem::file(origin, format!("ignore pattern {line:?}: {e}")))?;
            }
            Ok(())
        };
        if let Some(text) = file {
            add(IGNORE_FILE, text)?;
        }
        add("spec.ignore", extra)?;
        builder.build().map(IgnoreRules).map_err(|e| Problem::file(IGNORE_FILE, e.to_string()))
    }

    /// Whether `path` (relative to the root, `/`-separated) or a directory above it is ignored.
    pub fn ignores(&self, path: &str, is_dir: bool) -> bool {
        self.0.matched_path_or_any_parents(path, is_dir).is_ignore()
    }
}

struct Reader<'a, 'r> {
    repo: &'r Repository,
    tree: &'a Tree<'r>,
    root: &'a str,
    ignore: &'a IgnoreRules,
    limits: &'a ReadLimits,
    files: Vec<ReadFile>,
    problems: Vec<Problem>,
    total: usize,
}

impl Reader<'_, '_> {
    fn walk(&mut self, tree: &Tree<'_>, dir: &str) {
        for entry in tree.iter() {
            let Some(name) = entry.name() else {
                self.problems.push(Problem::file(dir, "a file name is not UTF-8"));
                continue;
            };
            let path = if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
            let is_dir = entry.kind() == Some(ObjectType::Tree);
            if self.ignore.ignores(&path, is_dir) {
                continue;
            }
            match entry.filemode() {
                0o040000 => match self.repo.find_tree(entry.id()) {
                    Ok(sub) => self.walk(&sub, &path),
                    Err(e) => self.problems.push(Problem::file(&path, e.message())),
                },
                0o100644 | 0o100755 if is_yaml(&path) => self.read_blob(&path, entry.id()),
                0o120000 if is_yaml(&path) => self.follow_symlink(&path, entry.id()),
                // Submodules (0o160000) are never followed; other files are not policies.
                _ => {}
            }
            if self.files.len() > self.limits.max_files {
                self.problems.push(Problem::file(&path, format!("more than {} policy files", self.limits.max_files)));
                return;
            }
        }
    }

    fn follow_symlink(&mut self, link: &str, mut blob: Oid) {
        let mut at = link.to_string();
        for _ in 0..MAX_SYMLINK_HOPS {
            let target = match self.repo.find_blob(blob) {
                Ok(b) => String::from_utf8_lossy(b.content()).into_owned(),
                Err(e) => return self.problems.push(Problem::file(link, e.message())),
            };
            let parent = at.rsplit_once('/').map_or("", |(dir, _)| dir);
            let resolved = if target.starts_with('/') { None } else { normalize(&format!("{parent}/{target}")) };
            let inside = resolved.as_deref().filter(|r| within(r, self.root));
            let Some(resolved) = inside else {
                return self
                    .problems
                    .push(Problem::file(link, format!("symlink to {target:?} leaves {:?}", self.root_name())));
            };
            let entry = match self.tree.get_path(std::path::Path::new(resolved)) {
                Ok(entry) => entry,
                Err(_) => {
                    return self.problems.push(Problem::file(link, format!("symlink to {target:?} points nowhere")));
                }
            };
            match entry.filemode() {
                0o100644 | 0o100755 => return self.read_blob(link, entry.id()),
                0o120000 => {
                    at = resolved.to_string();
                    blob = entry.id();
                }
                _ => {
                    return self
                        .problems
                        .push(Problem::file(link, format!("symlink to {target:?} is not a regular file")));
                }
            }
        }
        self.problems.push(Problem::file(link, "too many levels of symlinks"));
    }

    /// Reads a blob under `name`, checking its size from the object header before loading it.
    fn read_blob(&mut self, name: &str, id: Oid) {
        let size = match self.repo.odb().and_then(|odb| odb.read_header(id)) {
            Ok((size, _)) => size,
            Err(e) => return self.problems.push(Problem::file(name, e.message())),
        };
        if size > self.limits.max_file_bytes {
            let limit = self.limits.max_file_bytes;
            return self.problems.push(Problem::file(name, format!("{size} bytes exceed the limit of {limit} bytes")));
        }
        self.total += size;
        if self.total > self.limits.max_total_bytes {
            let limit = self.limits.max_total_bytes;
            return self
                .problems
                .push(Problem::file(name, format!("policy files exceed the total limit of {limit} bytes")));
        }
        let blob = match self.repo.find_blob(id) {
            Ok(blob) => blob,
            Err(e) => return self.problems.push(Problem::file(name, e.message())),
        };
        match std::str::from_utf8(blob.content()) {
            Ok(text) => self.files.push(ReadFile { name: name.to_string(), id, text: text.to_string() }),
            Err(_) => self.problems.push(Problem::file(name, "not UTF-8 text")),
        }
    }

    fn root_name(&self) -> &str {
        if self.root.is_empty() { "the repository" } else { self.root }
    }
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// `a/./b/../c` → `a/c`; `None` when `..` climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

fn within(path: &str, root: &str) -> bool {
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_within() {
        assert_eq!(normalize("a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("a/../../c"), None);
        assert!(within("policies/x.yaml", "policies"));
        assert!(!within("policies-other/x.yaml", "policies"));
        assert!(within("anything", ""));
    }
}
