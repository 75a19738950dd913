//! `palisade completion bash|zsh|fish`: the shell's completion script for `palisade`; as the
//! kubectl plugin, the `kubectl_complete-palisade` script through which kubectl (1.26 and later)
//! completes `kubectl palisade ...` in any shell, by asking the plugin's hidden `__complete`
//! command (Cobra's protocol: one candidate a line, `candidate\tdescription`, then `:DIRECTIVE`).
use std::io::Write;

use anyhow::Result;
use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, ValueEnum, ValueHint};

#[derive(clap::Args)]
pub struct Args {
    /// The shell: `source <(palisade completion bash)` in ~/.bashrc, `palisade completion zsh >
    /// "${fpath[1]}/_palisade"`, `palisade completion fish | source`.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The name of the hidden command kubectl's plugin completion calls.
pub const COMPLETE: &str = "__complete";

/// How kubectl runs the plugin for `kubectl palisade ...`.
const PLUGIN: &str = "kubectl palisade";

pub fn run(args: Args, command: clap::Command, bin_name: &str, out: &mut impl Write) -> Result<u8> {
    if bin_name == PLUGIN {
        write!(out, "{}", plugin_script())?;
        return Ok(0);
    }
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let (mut command, mut script) = (command, Vec::new());
    clap_complete::generate(shell, &mut command, bin_name, &mut script);
    out.write_all(&script)?;
    Ok(0)
}

/// The executable kubectl looks for on the PATH to complete the plugin's arguments; the same in
/// every shell, since kubectl's own completion script calls it.
fn plugin_script() -> String {
    format!(
        r#"#!/bin/sh
# Completion of `kubectl palisade ...` by kubectl 1.26 and later, in bash, zsh or fish alike
# (with kubectl's own completion: `source <(kubectl completion bash)`). Install this script as
# an executable named kubectl_complete-palisade on the PATH, e.g. beside kubectl-palisade:
#   f="$(dirname "$(command -v kubectl-palisade)")/kubectl_complete-palisade"
#   kubectl palisade completion bash > "$f" && chmod +x "$f"
exec kubectl-palisade {COMPLETE} "$@"
"#
    )
}

/// Cobra's ShellCompDirective values kubectl understands.
const DEFAULT: u32 = 0;
const NO_FILE_COMP: u32 = 4;
const FILTER_DIRS: u32 = 16;

/// Answers `__complete WORDS...`: WORDS are the plugin's arguments so far, the last one the
/// (possibly empty) word being completed.
pub fn complete(command: clap::Command, words: &[String], out: &mut impl Write) -> Result<u8> {
    let (candidates, directive) = candidates(command, words);
    for (value, help) in candidates {
        match help.filter(|h| !h.is_empty()) {
            Some(help) => writeln!(out, "{value}\t{help}")?,
            None => writeln!(out, "{value}")?,
        }
    }
    writeln!(out, ":{directive}")?;
    Ok(0)
}

/// The candidates for the last word, with their descriptions, and Cobra's directive.
fn candidates(mut command: clap::Command, words: &[String]) -> (Vec<(String, Option<String>)>, u32) {
    command.build();
    let (done, current) = match words.split_last() {
        Some((current, done)) => (done, current.as_str()),
        None => (&[][..], ""),
    };
    let mut level = &command;
    let mut positionals = 0;
    // The flag whose value the next word is.
    let mut pending: Option<&Arg> = None;
    let mut only_positionals = false;
    for word in done {
        if pending.take().is_some() {
            continue;
        }
        if !only_positionals && word == "--" {
            only_positionals = true;
        } else if !only_positionals && word.starts_with("--") {
            let (name, inline) = match word[2..].split_once('=') {
                Some((name, _)) => (name, true),
                None => (&word[2..], false),
            };
            pending = level.get_arguments().find(|a| a.get_long() == Some(name)).filter(|a| takes_value(a) && !inline);
        } else if !only_positionals && word.starts_with('-') && word.len() > 1 {
            // A cluster of short flags: the first one taking a value takes the rest, or the next word.
            for (i, c) in word[1..].char_indices() {
                let Some(arg) = level.get_arguments().find(|a| a.get_short() == Some(c)) else { break };
                if takes_value(arg) {
                    if i + c.len_utf8() == word.len() - 1 {
                        pending = Some(arg);
                    }
                    break;
                }
            }
        } else if let Some(sub) =
            level.get_subcommands().find(|s| s.get_name() == word || s.get_all_aliases().any(|a| a == word))
        {
            level = sub;
            positionals = 0;
        } else {
            positionals += 1;
        }
    }
    if let Some(arg) = pending {
        return values(arg, current, "");
    }
    if !only_positionals && let Some((name, value)) = current.strip_prefix("--").and_then(|rest| rest.split_once('=')) {
        return match level.get_arguments().find(|a| a.get_long() == Some(name)) {
            Some(arg) => values(arg, value, &format!("--{name}=")),
            None => (Vec::new(), NO_FILE_COMP),
        };
    }
    if !only_positionals && current.starts_with('-') {
        let mut flags = Vec::new();
        for arg in level.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = arg.get_help().map(|h| first_line(&h.to_string()));
            let mut names: Vec<String> = arg.get_long().map(|l| format!("--{l}")).into_iter().collect();
            names.extend(arg.get_short().map(|s| format!("-{s}")));
            for name in names.into_iter().filter(|n| n.starts_with(current)) {
                flags.push((name, help.clone()));
            }
        }
        return (flags, NO_FILE_COMP);
    }
    let mut found: Vec<(String, Option<String>)> = level
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name().starts_with(current))
        .map(|s| (s.get_name().to_string(), s.get_about().map(|a| first_line(&a.to_string()))))
        .collect();
    if found.is_empty() {
        // An alias (`get pro`) when no name starts so.
        for sub in level.get_subcommands().filter(|s| !s.is_hide_set()) {
            found.extend(
                sub.get_visible_aliases()
                    .filter(|a| a.starts_with(current))
                    .map(|a| (a.to_string(), sub.get_about().map(|h| first_line(&h.to_string())))),
            );
        }
    }
    let positional = level.get_positionals().nth(positionals);
    match positional {
        Some(arg) if level.get_subcommands().next().is_none() || found.is_empty() => {
            let (more, directive) = values(arg, current, "");
            found.extend(more);
            (found, directive)
        }
        _ => (found, NO_FILE_COMP),
    }
}

fn takes_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::Append)
}

/// The values of `arg` starting with `current`, each after `prefix`; files or directories when
/// the argument is a path.
fn values(arg: &Arg, current: &str, prefix: &str) -> (Vec<(String, Option<String>)>, u32) {
    let possible: Vec<PossibleValue> = arg.get_possible_values().into_iter().filter(|v| !v.is_hide_set()).collect();
    if !possible.is_empty() {
        let found = possible
            .iter()
            .filter(|v| v.get_name().starts_with(current))
            .map(|v| (format!("{prefix}{}", v.get_name()), v.get_help().map(|h| first_line(&h.to_string()))))
            .collect();
        return (found, NO_FILE_COMP);
    }
    match arg.get_value_hint() {
        ValueHint::AnyPath | ValueHint::FilePath | ValueHint::ExecutablePath => (Vec::new(), DEFAULT),
        ValueHint::DirPath => (Vec::new(), FILTER_DIRS),
        _ => (Vec::new(), NO_FILE_COMP),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cmd::Cli;

    fn complete_words(words: &[&str]) -> (Vec<String>, u32) {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let (found, directive) = candidates(Cli::command(), &words);
        (found.into_iter().map(|(v, _)| v).collect(), directive)
    }

    #[test]
    fn completes_subcommands_flags_and_values() {
        let (top, directive) = complete_words(&[""]);
        assert_eq!(directive, NO_FILE_COMP);
        for name in ["get", "describe", "promote", "reconcile", "version", "completion", "check"] {
            assert!(top.contains(&name.to_string()), "{name} in {top:?}");
        }
        assert!(!top.iter().any(|t| t == "bench" || t == COMPLETE), "hidden commands: {top:?}");
        assert_eq!(complete_words(&["re"]).0, ["reaudit", "resume", "reconcile"]);
        assert_eq!(complete_words(&["get", ""]).0, ["rollouts", "revisions", "reports", "help"]);
        assert_eq!(complete_words(&["get", "pr"]).0, ["pro", "prev"]);
        assert_eq!(complete_words(&["-n", "shop", "get", "re"]).0, ["revisions", "reports"]);
        let (flags, _) = complete_words(&["get", "rollouts", "--w"]);
        assert_eq!(flags, ["--watch"]);
        assert_eq!(complete_words(&["get", "rollouts", "-o", ""]).0, ["json", "yaml", "wide"]);
        assert_eq!(complete_words(&["get", "rollouts", "--output=y"]).0, ["--output=yaml"]);
        assert_eq!(complete_words(&["completion", "f"]).0, ["fish"]);
        // A path: the shell's own file completion.
        assert_eq!(complete_words(&["get", "rollouts", "--kubeconfig", ""]), (vec![], DEFAULT));
        assert_eq!(complete_words(&["get", "rollouts", "--kubeconfig", "x", "-"]).1, NO_FILE_COMP);
        // A name: nothing to offer, and no files either.
        assert_eq!(complete_words(&["describe", "rollout", ""]), (vec![], NO_FILE_COMP));
    }
}
