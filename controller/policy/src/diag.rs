//! Diagnostics: every problem names the file, the line and the field path it is about.
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: u32,
    /// Field path inside the document, e.g. `spec.ingress[0].toPorts[0].ports[0].port`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}:{}: ", self.file, self.line)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects diagnostics for one YAML document, turning field paths into line numbers.
pub(crate) struct Reporter<'a> {
    pub file: &'a str,
    pub root: &'a crate::yaml::Node,
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Reporter<'_> {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, path, message.into());
    }

    pub fn warning(&mut self, path: &str, message: impl Into<String>) {
        self.push(Severity::Warning, path, message.into());
    }

    pub fn line_of(&self, path: &str) -> u32 {
        self.root.line_of(&crate::yaml::parse_path(path))
    }

    fn push(&mut self, severity: Severity, path: &str, message: String) {
        let line = self.line_of(path);
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line,
            path: path.to_string(),
            message,
        });
    }
}
