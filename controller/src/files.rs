//! Reading policy and cluster files from disk for the offline commands.
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use palisade_policy::{Cluster, Diagnostic, ParseOptions, Parsed, SourceFile, parse_policies};
use palisade_source::read::{IGNORE_FILE, IgnoreRules};

/// Files larger than this are refused before they are read into memory.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

pub struct LoadedFile {
    pub name: String,
    pub text: String,
}

impl LoadedFile {
    pub fn source(&self) -> SourceFile<'_> {
        SourceFile { name: &self.name, text: &self.text }
    }
}

/// The YAML files at `paths`: files as given, directories walked recursively for `*.yaml` and
/// `*.yml`, in a stable order, leaving out what a `.palisadeignore` at the top of the directory
/// ignores (as the Git source does at the repository's root).
pub fn read_yaml_files(paths: &[PathBuf]) -> Result<Vec<LoadedFile>> {
    let mut found = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
        if meta.is_dir() {
            let ignore = ignore_rules(path)?;
            walk(path, "", &ignore, &mut found)?;
        } else {
            found.push(path.clone());
        }
    }
    found.iter().map(|p| read_file(p)).collect()
}

fn ignore_rules(dir: &Path) -> Result<IgnoreRules> {
    let file = dir.join(IGNORE_FILE);
    let text = match fs::read_to_string(&file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", file.display())),
    };
    IgnoreRules::new(text.as_deref(), "").map_err(|p| anyhow::anyhow!("{}: {}", dir.display(), p))
}

/// `relative`: `dir` from the top of the walk, `/`-separated, for the ignore rules.
fn walk(dir: &Path, relative: &str, ignore: &IgnoreRules, found: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let entry = if relative.is_empty() { name.into_owned() } else { format!("{relative}/{name}") };
        let is_dir = path.is_dir();
        if ignore.ignores(&entry, is_dir) {
            continue;
        }
        if is_dir {
            walk(&path, &entry, ignore, found)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<LoadedFile> {
    let file = fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!("{}: larger than the limit of {} MiB", path.display(), MAX_FILE_BYTES >> 20);
    }
    Ok(LoadedFile { name: path.display().to_string(), text })
}

pub fn load_policies(paths: &[PathBuf]) -> Result<Parsed> {
    let files = read_yaml_files(paths)?;
    let sources: Vec<SourceFile> = files.iter().map(LoadedFile::source).collect();
    Ok(parse_policies(&sources, &ParseOptions::default()))
}

pub fn load_cluster(path: &Path) -> Result<Cluster> {
    let file = read_file(path)?;
    Cluster::parse(&[file.source()]).map_err(|errors| anyhow::anyhow!(join_diagnostics(&errors)))
}

pub fn join_diagnostics(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
