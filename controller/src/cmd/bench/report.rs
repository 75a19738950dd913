//! `palisade bench report DIR`: every benchmark's `name: value unit` lines (DIR/<benchmark>.txt, as
//! `make bench` saves them) in one table against their goals: DIR/results.json for scripts and
//! DIR/results.md for people.
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Number, json};

use super::goals::{self, GOALS, Goal};

#[derive(clap::Args)]
pub struct Args {
    /// Directory of benchmark outputs, one `<benchmark>.txt` each (`make bench` uses target/bench).
    dir: PathBuf,
}

/// Lines that describe the machine, not a measurement: text values, and every benchmark that runs
/// on the machine may state them (they must then agree).
const MACHINE: [&str; 2] = ["kernel", "cpu"];
/// Written by the report itself, from the outputs' time.
const DATE: &str = "date";

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Number(Number),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => n.fmt(f),
            Value::Text(t) => t.fmt(f),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Line {
    /// 1-based, for errors.
    number: usize,
    name: String,
    value: Value,
    unit: String,
}

/// One benchmark's output file.
struct Output {
    benchmark: String,
    path: PathBuf,
    lines: Vec<Line>,
}

struct Figure<'a> {
    name: &'a str,
    value: &'a Number,
    unit: &'a str,
    goal: Option<&'static Goal>,
}

impl Figure<'_> {
    fn met(&self) -> Option<bool> {
        Some(self.goal?.met(self.value.as_f64().expect("a JSON number is finite")))
    }
}

struct Report<'a> {
    date: String,
    /// Kernel and CPU, in `MACHINE`'s order.
    machine: Vec<(&'a str, &'a str)>,
    /// Per benchmark, in the order of the outputs.
    benchmarks: Vec<(&'a str, Vec<Figure<'a>>)>,
}

pub fn run(args: Args) -> Result<u8> {
    let (outputs, date) = read_outputs(&args.dir)?;
    let report = Report::new(&outputs, date)?;
    let json = serde_json::to_string_pretty(&report.json())? + "\n";
    std::fs::write(args.dir.join("results.json"), json).context("writing results.json")?;
    let markdown = report.markdown();
    std::fs::write(args.dir.join("results.md"), &markdown).context("writing results.md")?;
    print!("{markdown}");
    eprintln!("wrote {0}/results.json and {0}/results.md", args.dir.display());
    Ok(0)
}

/// Every `*.txt` in the directory, by name, with the time the last of them was written.
fn read_outputs(dir: &Path) -> Result<(Vec<Output>, String)> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!("{}: no benchmark outputs (<benchmark>.txt); `make bench` writes them", dir.display());
    }
    let mut outputs = Vec::new();
    let mut latest = SystemTime::UNIX_EPOCH;
    for path in paths {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        latest = latest.max(std::fs::metadata(&path)?.modified()?);
        let benchmark = path.file_stem().expect("a .txt file has a stem").to_string_lossy().into_owned();
        outputs.push(Output { benchmark, lines: parse(&path, &text)?, path });
    }
    let date = Timestamp::try_from(latest)?.strftime("%Y-%m-%d %H:%M UTC").to_string();
    Ok((outputs, date))
}

/// `name: value unit` lines; the unit may be missing (ratios, counts), blank lines are skipped.
fn parse(path: &Path, text: &str) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let at = || format!("{}:{number}", path.display());
        if raw.trim().is_empty() {
            continue;
        }
        let Some((name, rest)) = raw.split_once(": ") else {
            bail!("{}: expected `name: value unit`, got {raw:?}", at());
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            bail!("{}: {name:?} is not a figure name (lowercase letters, digits and `_`)", at());
        }
        if name == DATE {
            bail!("{}: `{DATE}` is the report's own figure (the time of the outputs)", at());
        }
        let rest = rest.trim();
        let line = if MACHINE.contains(&name) {
            if rest.is_empty() {
                bail!("{}: {name} has no value", at());
            }
            Line { number, name: name.into(), value: Value::Text(rest.into()), unit: String::new() }
        } else {
            let (value, unit) = rest.split_once(' ').unwrap_or((rest, ""));
            let Ok(value) = value.parse::<Number>() else {
                bail!("{}: {name}: {value:?} is not a number", at());
            };
            Line { number, name: name.into(), value: Value::Number(value), unit: unit.trim().into() }
        };
        lines.push(line);
    }
    Ok(lines)
}

impl<'a> Report<'a> {
    fn new(outputs: &'a [Output], date: String) -> Result<Self> {
        let mut seen: HashMap<&str, (String, &Value)> = HashMap::new();
        let mut machine = Vec::new();
        let mut benchmarks = Vec::new();
        for output in outputs {
            let mut figures = Vec::new();
            for line in &output.lines {
                let at = format!("{}:{}", output.path.display(), line.number);
                if let Some((first, value)) = seen.get(line.name.as_str()) {
                    if !MACHINE.contains(&line.name.as_str()) {
                        bail!("{} is printed by both {first} and {at}: figure names must be unique", line.name);
                    }
                    if **value != line.value {
                        bail!(
                            "{} differs between {first} ({value}) and {at} ({}): were they run on one machine?",
                            line.name,
                            line.value
                        );
                    }
                    continue;
                }
                seen.insert(&line.name, (at.clone(), &line.value));
                let value = match &line.value {
                    Value::Text(text) => {
                        machine.push((line.name.as_str(), text.as_str()));
                        continue;
                    }
                    Value::Number(n) => n,
                };
                let goal = goals::find(&line.name);
                if let Some(goal) = goal.filter(|g| !g.unit.is_empty() && g.unit != line.unit) {
                    bail!("{at}: {} is in {:?}, but its goal ({goal}) is in {:?}", line.name, line.unit, goal.unit);
                }
                figures.push(Figure { name: &line.name, value, unit: &line.unit, goal });
            }
            benchmarks.push((output.benchmark.as_str(), figures));
        }
        for name in MACHINE {
            if !machine.iter().any(|(m, _)| *m == name) {
                bail!("no benchmark output states the machine's {name} (a `{name}:` line, as bench-datapath prints)");
            }
        }
        machine.sort_by_key(|(name, _)| MACHINE.iter().position(|m| m == name));
        Ok(Report { date, machine, benchmarks })
    }

    fn figures(&self) -> impl Iterator<Item = &Figure<'a>> {
        self.benchmarks.iter().flat_map(|(_, figures)| figures)
    }

    /// One object: figure → value, unit, goal, met; the date and machine are figures with text values.
    fn json(&self) -> serde_json::Value {
        let text = |value: &str| json!({"value": value, "unit": "", "goal": null, "met": null});
        let mut all = Map::new();
        all.insert(DATE.into(), text(&self.date));
        for (name, value) in &self.machine {
            all.insert((*name).into(), text(value));
        }
        for f in self.figures() {
            let goal = f.goal.map(|g| g.to_string());
            all.insert(f.name.into(), json!({"value": f.value, "unit": f.unit, "goal": goal, "met": f.met()}));
        }
        serde_json::Value::Object(all)
    }

    /// The date and machine, then a table per benchmark, then the goals no output reported.
    fn markdown(&self) -> String {
        let mut out = format!("Measured {}", self.date);
        for (name, value) in &self.machine {
            write!(out, ", {name}: {value}").unwrap();
        }
        out.push_str(".\n");
        for (benchmark, figures) in &self.benchmarks {
            write!(out, "\n`make bench-{benchmark}`:\n\n| figure | value | goal | met |\n|---|---|---|---|\n").unwrap();
            for figure in figures {
                let value = format!("{} {}", figure.value, figure.unit);
                let goal = figure.goal.map_or("—".into(), |g| g.to_string());
                let met = match figure.met() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                };
                writeln!(out, "| {} | {} | {goal} | {met} |", figure.name, value.trim_end()).unwrap();
            }
        }
        let missing: Vec<String> = GOALS
            .iter()
            .filter(|g| !self.figures().any(|f| f.name == g.figure))
            .map(|g| format!("`{}` ({g})", g.figure))
            .collect();
        if !missing.is_empty() {
            write!(out, "\nNot measured in this run: {}.\n", missing.join(", ")).unwrap();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(benchmark: &str, text: &str) -> Output {
        let path = PathBuf::from(format!("bench/{benchmark}.txt"));
        Output { benchmark: benchmark.into(), lines: parse(&path, text).unwrap(), path }
    }

    fn error(result: Result<impl Sized>) -> String {
        format!("{:#}", result.err().expect("an error"))
    }

    const MACHINE_LINES: &str = "kernel: 6.12.0-1-amd64\ncpu: AMD EPYC 7B13 (2 CPUs)\n";

    #[test]
    fn lines_are_name_value_and_an_optional_unit() {
        let lines = parse(Path::new("x.txt"), "kernel: 6.12.0 #1 SMP\n\nflip_1000_ms: 1.25 ms\nratio: 0.98\n").unwrap();
        assert_eq!(
            lines,
            [
                Line { number: 1, name: "kernel".into(), value: Value::Text("6.12.0 #1 SMP".into()), unit: "".into() },
                Line {
                    number: 3,
                    name: "flip_1000_ms".into(),
                    value: Value::Number("1.25".parse().unwrap()),
                    unit: "ms".into()
                },
                Line {
                    number: 4,
                    name: "ratio".into(),
                    value: Value::Number("0.98".parse().unwrap()),
                    unit: "".into()
                },
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_file_and_line() {
        let path = Path::new("bench/datapath.txt");
        assert_eq!(
            error(parse(path, "a: 1\n\nflip done in 3 ms\n")),
            r#"bench/datapath.txt:3: expected `name: value unit`, got "flip done in 3 ms""#
        );
        assert_eq!(
            error(parse(path, "flip_1000_ms: fast ms\n")),
            r#"bench/datapath.txt:1: flip_1000_ms: "fast" is not a number"#
        );
        assert_eq!(
            error(parse(path, "a: 1\nFlip ms: 3\n")),
            r#"bench/datapath.txt:2: "Flip ms" is not a figure name (lowercase letters, digits and `_`)"#
        );
        assert_eq!(error(parse(path, "tps: NaN /s\n")), r#"bench/datapath.txt:1: tps: "NaN" is not a number"#);
        assert!(error(parse(path, "date: today\n")).starts_with("bench/datapath.txt:1: `date` is the report's own"));
    }

    #[test]
    fn a_figure_printed_by_two_benchmarks_is_an_error_naming_both_files() {
        let outputs =
            [output("agent", "a: 1\nincremental_ratio: 200 x\n"), output("policy", "incremental_ratio: 0.002\n")];
        assert_eq!(
            error(Report::new(&outputs, "now".into())),
            "incremental_ratio is printed by both bench/agent.txt:2 and bench/policy.txt:1: figure names must be unique"
        );
        let outputs = [output("datapath", "flip_1000_ms: 1 ms\nflip_1000_ms: 2 ms\n")];
        assert_eq!(
            error(Report::new(&outputs, "now".into())),
            "flip_1000_ms is printed by both bench/datapath.txt:1 and bench/datapath.txt:2: figure names must be unique"
        );
    }

    #[test]
    fn every_benchmark_may_state_the_machine_but_they_must_agree() {
        let outputs = [output("agent", MACHINE_LINES), output("datapath", MACHINE_LINES)];
        let report = Report::new(&outputs, "now".into()).unwrap();
        assert_eq!(report.machine, [("kernel", "6.12.0-1-amd64"), ("cpu", "AMD EPYC 7B13 (2 CPUs)")]);
        let outputs = [output("agent", MACHINE_LINES), output("datapath", "kernel: 6.1.0\n")];
        assert_eq!(
            error(Report::new(&outputs, "now".into())),
            "kernel differs between bench/agent.txt:1 (6.12.0-1-amd64) and bench/datapath.txt:1 (6.1.0): were they run on one machine?"
        );
        let outputs = [output("policy", "parse_s: 0.5 s\n")];
        assert_eq!(
            error(Report::new(&outputs, "now".into())),
            "no benchmark output states the machine's kernel (a `kernel:` line, as bench-datapath prints)"
        );
    }

    #[test]
    fn a_figure_in_another_unit_than_its_goal_is_an_error() {
        let outputs = [output("datapath", &format!("{MACHINE_LINES}flip_1000_ms: 0.002 s\n"))];
        assert_eq!(
            error(Report::new(&outputs, "now".into())),
            r#"bench/datapath.txt:3: flip_1000_ms is in "s", but its goal (≤ 10 ms) is in "ms""#
        );
    }

    #[test]
    fn json_has_every_figure_with_its_goal_and_whether_it_is_met() {
        let outputs = [
            output("datapath", &format!("{MACHINE_LINES}verdict_new_flow_ns: 60 ns\nflip_vs_alternative_ratio: 1\n")),
            output("policy", "parse_s: 0.5 s\ncompile_full_s: 10.5 s\n"),
        ];
        let json = Report::new(&outputs, "2026-12-06 02:40 UTC".into()).unwrap().json();
        let want = serde_json::json!({
            "date": {"value": "2026-12-06 02:40 UTC", "unit": "", "goal": null, "met": null},
            "kernel": {"value": "6.12.0-1-amd64", "unit": "", "goal": null, "met": null},
            "cpu": {"value": "AMD EPYC 7B13 (2 CPUs)", "unit": "", "goal": null, "met": null},
            "verdict_new_flow_ns": {"value": 60, "unit": "ns", "goal": "≤ 60 ns", "met": true},
            "flip_vs_alternative_ratio": {"value": 1, "unit": "", "goal": "> 1", "met": false},
            "parse_s": {"value": 0.5, "unit": "s", "goal": null, "met": null},
            "compile_full_s": {"value": 10.5, "unit": "s", "goal": "≤ 10 s", "met": false},
        });
        assert_eq!(json, want);
    }

    #[test]
    fn markdown_heads_the_tables_with_date_and_machine_and_lists_unmeasured_goals() {
        let outputs = [
            output("datapath", &format!("{MACHINE_LINES}verdict_new_flow_ns: 61.5 ns\n")),
            output("policy", "parse_s: 0.5 s\nincremental_ratio: 0.002\n"),
        ];
        let markdown = Report::new(&outputs, "2026-12-06 02:40 UTC".into()).unwrap().markdown();
        let tables = "Measured 2026-12-06 02:40 UTC, kernel: 6.12.0-1-amd64, cpu: AMD EPYC 7B13 (2 CPUs).

`make bench-datapath`:

| figure | value | goal | met |
|---|---|---|---|
| verdict_new_flow_ns | 61.5 ns | ≤ 60 ns | **no** |

`make bench-policy`:

| figure | value | goal | met |
|---|---|---|---|
| parse_s | 0.5 s | — | — |
| incremental_ratio | 0.002 | ≤ 0.01 | yes |

Not measured in this run: `compile_full_s` (≤ 10 s), ";
        assert!(markdown.starts_with(tables), "{markdown}");
        assert!(markdown.ends_with("`time_to_decision_s` (≤ 620 s).\n"), "{markdown}");
    }
}
