//! Untrusted YAML text (Kubernetes and Cilium manifests, possibly several documents) to a tree of
//! [`Node`]s that keep their line and column, so that every later error can name file, line and
//! field path.
//!
//! Built on yaml-rust2's event parser rather than its `YamlLoader`, which recurses, expands aliases
//! without bound and drops positions. The tree is built here with an explicit stack, anchors and
//! aliases are resolved here, and each bound in [`Limits`] is checked before the memory it guards
//! is allocated.
//!
//! Scalars follow the YAML 1.2 core schema: `yes` and `on` are strings, `0777` is 777. Integers
//! that do not fit an `i64` stay strings, so that the exact text reaches the error message.
//! Documents whose root is null (`---` alone, only comments, `~`) are skipped, as kubectl does.

use std::collections::HashMap;
use std::iter::Peekable;
use std::str::Chars;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Bounds on hostile input. The depth bound is also what keeps the recursive functions on
/// [`Node`] (and serde on [`Node::to_json`]'s output) off the end of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the whole text, checked before parsing.
    pub max_bytes: usize,
    /// Nesting of sequences and mappings; a root mapping is depth 1.
    pub max_depth: usize,
    /// Nodes in the whole stream: every scalar (keys included) and collection, every node an
    /// alias copies, and the copy kept for each anchor.
    pub max_nodes: usize,
    /// Documents in the stream, empty ones included.
    pub max_documents: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 4 << 20, max_depth: 64, max_nodes: 200_000, max_documents: 10_000 }
    }
}

/// A YAML node and where it starts (1-based, columns in characters).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: u32,
    pub column: u32,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Entries in source order; keys are unique.
    Map(Vec<(String, Node)>),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct YamlError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// One step of a field path such as `spec.ingress[0].toPorts[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Parses every document in `text`, skipping empty ones.
pub fn parse_documents(text: &str, limits: &Limits) -> Result<Vec<Node>, YamlError> {
    if text.len() > limits.max_bytes {
        return Err(Pos::START.error(format!(
            "input is {} bytes, more than the limit of {}",
            text.len(),
            limits.max_bytes
        )));
    }
    check_printable(text)?;
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::new(limits);
    let mut documents = Vec::new();
    let mut started = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| Pos::of(e.marker()).error(e.info()))?;
        let pos = Pos::of(&mark);
        match event {
            Event::StreamEnd => return Ok(documents),
            Event::DocumentStart => {
                started += 1;
                if started > limits.max_documents {
                    return Err(pos.error(format!("more than {} documents", limits.max_documents)));
                }
                // Anchors belong to one document, but yaml-rust2's event stream lets an alias
                // name an anchor of an earlier one.
                builder.anchors.clear();
            }
            Event::DocumentEnd => {
                if let Some(root) = builder.root.take()
                    && !matches!(root.value, Value::Null)
                {
                    documents.push(root);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                builder.scalar(text, style, anchor, tag.as_ref(), pos)?;
            }
            Event::Alias(id) => builder.alias(id, pos)?,
            Event::SequenceStart(anchor, tag) => {
                builder.open(Collection::Seq(Vec::new()), anchor, tag.as_ref(), pos)?;
            }
            Event::MappingStart(anchor, tag) => {
                let map = Collection::Map { entries: Vec::new(), key_lines: HashMap::new(), key: None };
                builder.open(map, anchor, tag.as_ref(), pos)?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
            Event::StreamStart | Event::Nothing => {}
        }
    }
}

/// YAML allows only printable characters (YAML 1.2, 5.1). yaml-rust2 takes a NUL for the end
/// of the stream, which would silently drop everything after it, so control characters are
/// refused here with their position.
fn check_printable(text: &str) -> Result<(), YamlError> {
    let printable = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}'
    };
    let Some((offset, c)) = text.char_indices().find(|(_, c)| !printable(*c)) else { return Ok(()) };
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let saturate = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Err(Pos { line: saturate(line), column: saturate(column) }
        .error(format!("control character U+{:04X} is not allowed in YAML", c as u32)))
}

/// Parses a field path: keys separated by `.`, indexes as `[0]`, and keys that contain dots as
/// `["app.kubernetes.io/name"]` (or single quotes; `\` escapes inside the quotes). `""` is the
/// root. Malformed brackets are read leniently as keys: paths come from our own code.
pub fn parse_path(path: &str) -> Vec<PathSegment> {
    let mut segments = Vec::new();
    let mut key = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '.' && c != '[' {
            key.push(c);
            continue;
        }
        if !key.is_empty() {
            segments.push(PathSegment::Key(std::mem::take(&mut key)));
        }
        if c == '[' {
            segments.push(bracket(&mut chars));
        }
    }
    if !key.is_empty() {
        segments.push(PathSegment::Key(key));
    }
    segments
}

/// Reads what follows a `[` up to its `]`: a quoted key, an index, or else an unquoted key.
fn bracket(chars: &mut Peekable<Chars>) -> PathSegment {
    let quote = chars.next_if(|&c| c == '"' || c == '\'');
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match quote {
            Some(_) if c == '\\' => text.extend(chars.next()),
            Some(q) if c == q => {
                chars.next_if_eq(&']');
                break;
            }
            None if c == ']' => break,
            _ => text.push(c),
        }
    }
    match (quote, text.parse()) {
        (None, Ok(index)) => PathSegment::Index(index),
        _ => PathSegment::Key(text),
    }
}

impl Node {
    /// The JSON form, for typed serde deserialization. NaN and infinities, which JSON lacks,
    /// become their YAML spelling as strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match &self.value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or_else(|| Json::String(non_finite_text(*f).to_owned()), Json::Number),
            Value::String(s) => Json::String(s.clone()),
            Value::Seq(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(entries) => Json::Object(entries.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    pub fn get(&self, path: &[PathSegment]) -> Option<&Node> {
        path.iter().try_fold(self, Node::child)
    }

    /// The line of the deepest node that exists along `path`, so that an error about a missing
    /// or misplaced field still points near it.
    pub fn line_of(&self, path: &[PathSegment]) -> u32 {
        let mut node = self;
        for segment in path {
            match node.child(segment) {
                Some(child) => node = child,
                None => break,
            }
        }
        node.line
    }

    fn child(&self, segment: &PathSegment) -> Option<&Node> {
        match (&self.value, segment) {
            (Value::Map(entries), PathSegment::Key(key)) => {
                entries.iter().find(|(k, _)| k == key).map(|(_, node)| node)
            }
            (Value::Seq(items), PathSegment::Index(i)) => items.get(*i),
            _ => None,
        }
    }
}

fn non_finite_text(f: f64) -> &'static str {
    if f.is_nan() {
        ".nan"
    } else if f > 0.0 {
        ".inf"
    } else {
        "-.inf"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    line: u32,
    column: u32,
}

impl Pos {
    const START: Pos = Pos { line: 1, column: 1 };

    fn of(mark: &Marker) -> Self {
        // yaml-rust2 counts lines from 1 but columns from 0, in characters.
        let saturate = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Pos { line: saturate(mark.line()), column: saturate(mark.col().saturating_add(1)) }
    }

    fn at(node: &Node) -> Self {
        Pos { line: node.line, column: node.column }
    }

    fn error(self, message: impl Into<String>) -> YamlError {
        YamlError { line: self.line, column: self.column, message: message.into() }
    }

    fn node(self, value: Value) -> Node {
        Node { line: self.line, column: self.column, value }
    }
}

const COMPLEX_KEY: &str = "mapping keys must be scalars";

/// Builds the tree from events without recursion.
struct Builder<'a> {
    limits: &'a Limits,
    /// Nodes allocated so far in the whole stream.
    nodes: usize,
    /// Collections still open, innermost last.
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    /// The current document's root once complete.
    root: Option<Node>,
}

struct Frame {
    pos: Pos,
    anchor: usize,
    /// Nodes in this subtree so far, itself included.
    size: usize,
    /// Height of the tallest child so far (a scalar is 0).
    height: usize,
    collection: Collection,
}

enum Collection {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(String, Node)>,
        /// Line of each key, to name the first one when a duplicate shows up.
        key_lines: HashMap<String, u32>,
        /// A key waiting for its value.
        key: Option<(String, Pos)>,
    },
}

/// A complete anchored node, kept for aliases to copy.
struct Anchored {
    node: Node,
    /// What a copy costs against `max_nodes`.
    size: usize,
    /// What a copy adds to the depth where it lands.
    height: usize,
    /// The source text if the node is a scalar, so that an alias can serve as a mapping key.
    key: Option<String>,
}

impl<'a> Builder<'a> {
    fn new(limits: &'a Limits) -> Self {
        Builder { limits, nodes: 0, stack: Vec::new(), anchors: HashMap::new(), root: None }
    }

    /// Reserves `n` nodes, failing before they are allocated.
    fn reserve(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            return Err(pos
                .error(format!("more than {} YAML nodes (every node an alias copies counts)", self.limits.max_nodes)));
        }
        Ok(())
    }

    fn pending_key(&self) -> Option<Pos> {
        match &self.stack.last()?.collection {
            Collection::Map { key: Some((_, pos)), .. } => Some(*pos),
            _ => None,
        }
    }

    fn open(&mut self, collection: Collection, anchor: usize, tag: Option<&Tag>, pos: Pos) -> Result<(), YamlError> {
        if let Some(Frame { collection: Collection::Map { key: None, .. }, .. }) = self.stack.last() {
            return Err(pos.error(COMPLEX_KEY));
        }
        if let Some(tag) = tag {
            let expected = match collection {
                Collection::Seq(_) => "seq",
                Collection::Map { .. } => "map",
            };
            if !matches!(tag_name(tag), Some(name) if name == expected || name == "!") {
                return Err(pos.error(format!("unsupported tag {}", tag_text(tag))));
            }
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(pos.error(format!("nested deeper than {} levels", self.limits.max_depth)));
        }
        self.reserve(1, pos)?;
        self.stack.push(Frame { pos, anchor, size: 1, height: 0, collection });
        Ok(())
    }

    fn close(&mut self) -> Result<(), YamlError> {
        let frame = self.stack.pop().expect("yaml-rust2 balances start and end events");
        let value = match frame.collection {
            Collection::Seq(items) => Value::Seq(items),
            Collection::Map { entries, .. } => Value::Map(entries),
        };
        self.finish(frame.pos.node(value), frame.anchor, frame.size, frame.height + 1, None)
    }

    fn scalar(
        &mut self,
        text: String,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        mut pos: Pos,
    ) -> Result<(), YamlError> {
        let value = resolve(&text, style, tag).map_err(|message| pos.error(message))?;
        // yaml-rust2 places an empty value at the next token, often on a later line; the key's
        // position is the one worth reporting.
        if text.is_empty()
            && style == TScalarStyle::Plain
            && let Some(key_pos) = self.pending_key()
        {
            pos = key_pos;
        }
        self.reserve(1, pos)?;
        self.finish(pos.node(value), anchor, 1, 0, Some(text))
    }

    fn alias(&mut self, id: usize, pos: Pos) -> Result<(), YamlError> {
        let Some(&Anchored { size, height, .. }) = self.anchors.get(&id) else {
            return Err(pos.error("alias to an anchor that is not complete in this document"));
        };
        if self.stack.len() + height > self.limits.max_depth {
            return Err(pos.error(format!("alias expands deeper than {} levels", self.limits.max_depth)));
        }
        self.reserve(size, pos)?;
        let anchored = &self.anchors[&id];
        // The copy's root sits where the alias is written; inner nodes keep the anchor's lines.
        let node = pos.node(anchored.node.value.clone());
        let key = anchored.key.clone();
        self.attach(node, size, height, key)
    }

    /// Records a complete node under its anchor, if any, then attaches it to its parent.
    fn finish(
        &mut self,
        node: Node,
        anchor: usize,
        size: usize,
        height: usize,
        key: Option<String>,
    ) -> Result<(), YamlError> {
        if anchor != 0 {
            // The kept copy is memory too; without counting it, nested anchors would multiply
            // the tree by its depth.
            self.reserve(size, Pos::at(&node))?;
            let anchored = Anchored { node: node.clone(), size, height, key: key.clone() };
            self.anchors.insert(anchor, anchored);
        }
        self.attach(node, size, height, key)
    }

    /// Puts a complete node into the innermost open collection, or makes it the root. `key` is
    /// the node's source text if it is a scalar.
    fn attach(&mut self, node: Node, size: usize, height: usize, key: Option<String>) -> Result<(), YamlError> {
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        frame.size += size;
        frame.height = frame.height.max(height);
        let pos = Pos::at(&node);
        match &mut frame.collection {
            Collection::Seq(items) => items.push(node),
            Collection::Map { entries, key_lines, key: pending } => match pending.take() {
                Some((name, _)) => entries.push((name, node)),
                None => {
                    let name = key.ok_or_else(|| pos.error(COMPLEX_KEY))?;
                    // A second value for a key would silently hide the first.
                    if let Some(first) = key_lines.insert(name.clone(), pos.line) {
                        return Err(pos.error(format!("duplicate key {name:?} (first on line {first})")));
                    }
                    // A block mapping's start event is marked at its first key's `:`; a flow
                    // mapping's at its `{`, which comes before the key.
                    if entries.is_empty() && pos < frame.pos {
                        frame.pos = pos;
                    }
                    *pending = Some((name, pos));
                }
            },
        }
        Ok(())
    }
}

/// The name of a YAML core tag (`!!int` is "int"), "!" for the non-specific tag, or `None`.
fn tag_name(tag: &Tag) -> Option<&str> {
    const CORE: &str = "tag:yaml.org,2002:";
    match (tag.handle.as_str(), tag.suffix.as_str()) {
        (CORE, name) => Some(name),
        ("", "!") => Some("!"),
        ("", verbatim) => verbatim.strip_prefix(CORE),
        _ => None,
    }
}

fn tag_text(tag: &Tag) -> String {
    match tag_name(tag) {
        Some("!") => "!".to_owned(),
        Some(name) => format!("!!{name}"),
        None => format!("{}{}", tag.handle, tag.suffix),
    }
}

fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let Some(tag) = tag else {
        return Ok(match style {
            TScalarStyle::Plain => resolve_plain(text),
            _ => Value::String(text.to_owned()),
        });
    };
    // An explicit tag overrides the style: `!!int "80"` is 80.
    match (tag_name(tag), resolve_plain(text)) {
        (Some("str" | "!"), _) => Ok(Value::String(text.to_owned())),
        (Some("null"), v @ Value::Null)
        | (Some("bool"), v @ Value::Bool(_))
        | (Some("int"), v @ Value::Int(_))
        | (Some("float"), v @ Value::Float(_)) => Ok(v),
        (Some("float"), Value::Int(i)) => Ok(Value::Float(i as f64)),
        (Some(name @ ("null" | "bool" | "int" | "float")), _) => Err(format!("{text:?} is not a valid !!{name}")),
        _ => Err(format!("unsupported tag {}", tag_text(tag))),
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        _ => resolve_number(text).unwrap_or_else(|| Value::String(text.to_owned())),
    }
}

fn resolve_number(text: &str) -> Option<Value> {
    // Out-of-range integers yield None here and so stay strings.
    let radix = |digits: &str, radix: u32| {
        let valid = !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix));
        valid.then(|| i64::from_str_radix(digits, radix).ok().map(Value::Int)).flatten()
    };
    if let Some(hex) = text.strip_prefix("0x") {
        return radix(hex, 16);
    }
    if let Some(octal) = text.strip_prefix("0o") {
        return radix(octal, 8);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if is_digits(unsigned) {
        return text.parse().ok().map(Value::Int);
    }
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        let inf = if text.starts_with('-') { f64::NEG_INFINITY } else { f64::INFINITY };
        return Some(Value::Float(inf));
    }
    // Rust's float syntax is wider (`inf`, `NaN`), so the core schema's is checked first.
    is_core_float(unsigned).then(|| text.parse().ok().map(Value::Float)).flatten()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`: the core schema's float, sign removed.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (s, None),
    };
    let digits_or_empty = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits_or_empty(int) && digits_or_empty(frac) && !(int.is_empty() && frac.is_empty()),
        None => is_digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| is_digits(e.strip_prefix(['-', '+']).unwrap_or(e)))
}

/// Renders a JSON value as block YAML that reads back as the same value, both here and in YAML
/// 1.1 readers such as kubectl's. Strings are written plain only when nothing could misread
/// them; otherwise double-quoted, which YAML shares with JSON.
pub fn to_yaml(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_block(value, 0, &mut out);
    out
}

fn write_block(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value as Json;
    let pad = " ".repeat(indent);
    match value {
        Json::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                out.push_str(&format!("{pad}{}:", scalar_text(key)));
                match v {
                    Json::Object(m) if !m.is_empty() => {
                        out.push('\n');
                        write_block(v, indent + 2, out);
                    }
                    // Sequences under a key stay at the key's indentation, as kubectl prints them.
                    Json::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        write_block(v, indent, out);
                    }
                    _ => out.push_str(&format!(" {}\n", inline(v))),
                }
            }
        }
        Json::Array(items) if !items.is_empty() => {
            for item in items {
                let mut nested = String::new();
                write_block(item, indent + 2, &mut nested);
                out.push_str(&format!("{pad}- {}", &nested[indent + 2..]));
            }
        }
        other => out.push_str(&format!("{pad}{}\n", inline(other))),
    }
}

fn inline(value: &serde_json::Value) -> String {
    use serde_json::Value as Json;
    match value {
        Json::String(s) => scalar_text(s),
        Json::Array(_) => "[]".into(),
        Json::Object(_) => "{}".into(),
        other => other.to_string(),
    }
}

fn scalar_text(s: &str) -> String {
    if plain_is_safe(s) { s.to_owned() } else { serde_json::Value::from(s).to_string() }
}

fn plain_is_safe(s: &str) -> bool {
    const YAML_1_1_WORDS: [&str; 16] =
        ["y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"];
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.chars().any(|c| c.is_control() || "\"'`{}[],&*!|>%@\\".contains(c))
        && !YAML_1_1_WORDS.contains(&s)
        && matches!(resolve_plain(s), Value::String(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
        parse_documents(text, &Limits::default())
    }

    fn one(text: &str) -> Node {
        let mut docs = parse(text).unwrap();
        assert_eq!(docs.len(), 1, "{text}");
        docs.remove(0)
    }

    fn at<'n>(node: &'n Node, path: &str) -> &'n Node {
        node.get(&parse_path(path)).unwrap_or_else(|| panic!("no {path}"))
    }

    const POLICY: &str = "\
# leading comment
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  labels:
    app.kubernetes.io/name: web
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: client
      toPorts:
        - ports:
            - port: \"80\"
              protocol: TCP
";

    #[test]
    fn multiple_documents_keep_their_lines_and_skip_empty_ones() {
        let text = "---\n# only a comment\n---\nkind: A\n---\n\nkind: B\nn: 1\n---\n~\n---\n";
        let docs = parse(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].line, docs[0].column), (4, 1));
        assert_eq!(at(&docs[1], "kind").value, Value::String("B".into()));
        assert_eq!(at(&docs[1], "kind").line, 7);
        assert_eq!(at(&docs[1], "n").line, 8);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# nothing\n").unwrap().is_empty());
    }

    #[test]
    fn line_of_follows_nested_paths() {
        let doc = one(POLICY);
        let port = parse_path("spec.ingress[0].toPorts[0].ports[0].port");
        assert_eq!(doc.line_of(&port), 17);
        assert_eq!(doc.get(&port).unwrap().column, 21);
        assert_eq!(doc.line_of(&parse_path("spec.ingress[0]")), 12);
        assert_eq!(doc.line_of(&parse_path("spec.ingress[0].toPorts[0].ports[0].protocol")), 18);
        assert_eq!(doc.line_of(&parse_path("spec.endpointSelector.matchLabels.app")), 10);
        // Missing fields point at the deepest one that exists.
        assert_eq!(doc.line_of(&parse_path("spec.ingress[0].toPorts[3].ports")), 16);
        assert_eq!(doc.line_of(&parse_path("spec.egress")), 9);
        assert_eq!(doc.line_of(&[]), 2);
        assert_eq!(at(&doc, r#"metadata.labels["app.kubernetes.io/name"]"#).line, 7);
    }

    #[test]
    fn paths_parse_keys_indexes_and_quoted_keys() {
        use PathSegment::{Index, Key};
        let key = |s: &str| Key(s.to_owned());
        assert_eq!(parse_path(""), vec![]);
        assert_eq!(parse_path("specs[2]"), vec![key("specs"), Index(2)]);
        assert_eq!(
            parse_path("spec.ingress[0].toPorts[0].ports[0].port"),
            vec![key("spec"), key("ingress"), Index(0), key("toPorts"), Index(0), key("ports"), Index(0), key("port"),]
        );
        assert_eq!(
            parse_path(r#"metadata.labels["app.kubernetes.io/name"]"#),
            vec![key("metadata"), key("labels"), key("app.kubernetes.io/name")]
        );
        assert_eq!(parse_path("a['k8s:io.ns'].b"), vec![key("a"), key("k8s:io.ns"), key("b")]);
        assert_eq!(parse_path(r#"a["say \"hi\"]"]"#), vec![key("a"), key(r#"say "hi"]"#)]);
        assert_eq!(parse_path("io.cilium/app-name"), vec![key("io"), key("cilium/app-name")]);
        assert_eq!(parse_path("[0][1]"), vec![Index(0), Index(1)]);
        assert_eq!(parse_path("a[x]"), vec![key("a"), key("x")]);
    }

    #[test]
    fn scalars_follow_the_yaml_1_2_core_schema() {
        let doc = one(concat!(
            "port: 80\nquoted: \"80\"\nsingle: '80'\nyes: yes\non: off\nt: True\nn1: ~\nn2: null\n",
            "n3:\nhex: 0x1F\noct: 0o17\nleading0: 0777\nneg: -12\nplus: +3\nf: 1.5\nexp: 1e3\n",
            "dot: .5\ninf: -.inf\nnan: .NaN\nbig: 99999999999999999999\nbighex: 0xFFFFFFFFFFFFFFFFF\n",
            "under: 1_000\nneghex: -0x1\nlit: |\n  80\nfold: >-\n  true\n80: key\n",
            "str: !!str 80\nint: !!int \"80\"\nfloat: !!float 1\nbool: !!bool \"false\"\n",
            "ns: ! 12\nverbatim: !<tag:yaml.org,2002:str> 5\n",
        ));
        let value = |path: &str| at(&doc, path).value.clone();
        let s = |s: &str| Value::String(s.to_owned());
        assert_eq!(value("port"), Value::Int(80));
        assert_eq!(value("quoted"), s("80"));
        assert_eq!(value("single"), s("80"));
        assert_eq!(value("yes"), s("yes"));
        assert_eq!(value("on"), s("off"));
        assert_eq!(value("t"), Value::Bool(true));
        assert_eq!([value("n1"), value("n2"), value("n3")], [Value::Null, Value::Null, Value::Null]);
        assert_eq!(value("hex"), Value::Int(31));
        assert_eq!(value("oct"), Value::Int(15));
        assert_eq!(value("leading0"), Value::Int(777));
        assert_eq!(value("neg"), Value::Int(-12));
        assert_eq!(value("plus"), Value::Int(3));
        assert_eq!(value("f"), Value::Float(1.5));
        assert_eq!(value("exp"), Value::Float(1000.0));
        assert_eq!(value("dot"), Value::Float(0.5));
        assert_eq!(value("inf"), Value::Float(f64::NEG_INFINITY));
        assert!(matches!(value("nan"), Value::Float(f) if f.is_nan()));
        assert_eq!(value("big"), s("99999999999999999999"));
        assert_eq!(value("bighex"), s("0xFFFFFFFFFFFFFFFFF"));
        assert_eq!(value("under"), s("1_000"));
        assert_eq!(value("neghex"), s("-0x1"));
        assert_eq!(value("lit"), s("80\n"));
        assert_eq!(value("fold"), s("true"));
        assert_eq!(value("80"), s("key"));
        assert_eq!(value("str"), s("80"));
        assert_eq!(value("int"), Value::Int(80));
        assert_eq!(value("float"), Value::Float(1.0));
        assert_eq!(value("bool"), Value::Bool(false));
        assert_eq!(value("ns"), s("12"));
        assert_eq!(value("verbatim"), s("5"));

        let err = parse("a: !!int abc\n").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (1, "\"abc\" is not a valid !!int"));
        assert_eq!(parse("a: !foo x\n").unwrap_err().message, "unsupported tag !foo");
        assert_eq!(parse("a: !!binary x\n").unwrap_err().message, "unsupported tag !!binary");
        assert_eq!(parse("a: !!seq {}\n").unwrap_err().message, "unsupported tag !!seq");
        assert!(parse("a: !!map {b: 1}\nc: !!seq [1]\n").is_ok());
    }

    #[test]
    fn empty_values_are_placed_at_their_key() {
        let doc = one("a:\nb: 1\nc:\n\n\n");
        assert_eq!((at(&doc, "a").line, at(&doc, "a").value.clone()), (1, Value::Null));
        assert_eq!(at(&doc, "c").line, 3);
    }

    #[test]
    fn to_json_keeps_order_and_numbers() {
        let doc = one("z: 1\na: [1.5, .inf, .nan, \"x\", ~, true]\nm: {k: v}\n");
        let json = doc.to_json();
        assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["z", "a", "m"]);
        assert_eq!(json, serde_json::json!({"z": 1, "a": [1.5, ".inf", ".nan", "x", null, true], "m": {"k": "v"}}));
    }

    #[test]
    fn billion_laughs_is_refused_fast() {
        let mut text =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (prev, name) in ('a'..='h').zip('b'..='i') {
            let aliases = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("{name}: &{name} [{aliases}]\n"));
        }
        let start = Instant::now();
        let err = parse(&text).unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(100), "took {:?}", start.elapsed());
        assert!(err.message.starts_with("more than 200000 YAML nodes"), "{err}");
        assert_eq!(err.line, 6);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let start = Instant::now();
        for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
            // Within yaml-rust2's own flow limit (255), so our depth check speaks.
            let text = format!("{}1{}", open.repeat(100), close.repeat(100));
            let err = parse(&text).unwrap_err();
            assert_eq!(err.message, "nested deeper than 64 levels", "{open}");
            assert_eq!((err.line, err.column), (1, 1 + 64 * open.len() as u32));

            let deep = open.repeat(100_000);
            assert!(parse(&deep).is_err(), "{open}");
        }
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
        let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_line() {
        let err = parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(err.to_string(), "4:3: duplicate key \"c\" (first on line 3)");
        // Keys compare by their text: `80` and `"80"` are the same key.
        assert_eq!(parse("{80: a, \"80\": b}").unwrap_err().line, 1);
        // Merge keys are plain keys.
        assert!(parse("<<: {a: 1}\nb: 2\n").is_ok());
    }

    #[test]
    fn complex_keys_are_refused() {
        assert_eq!(parse("? [a]\n: 1\n").unwrap_err().message, COMPLEX_KEY);
        assert_eq!(parse("{a: 1}: 1\n").unwrap_err().message, COMPLEX_KEY);
        assert_eq!(parse("x: &m {a: 1}\ny: {*m : 1}\n").unwrap_err().message, COMPLEX_KEY);
        // An alias to a scalar is a scalar key.
        let doc = one("x: &k name\ny: {*k : 1}\n");
        assert_eq!(at(&doc, "y.name").value, Value::Int(1));
    }

    #[test]
    fn input_over_max_bytes_is_refused() {
        let limits = Limits { max_bytes: 10, ..Limits::default() };
        let err = parse_documents("a: 12345678\n", &limits).unwrap_err();
        assert_eq!(err.to_string(), "1:1: input is 12 bytes, more than the limit of 10");
        assert!(parse_documents("a: 1234\n", &limits).is_ok());
    }

    #[test]
    fn too_many_documents_are_refused() {
        let limits = Limits { max_documents: 2, ..Limits::default() };
        let err = parse_documents("a: 1\n---\nb: 1\n---\nc: 1\n", &limits).unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (4, "more than 2 documents"));
    }

    #[test]
    fn aliases_within_limits_expand() {
        let text = "\
ports: &web
  - port: 80
  - port: 443
a:
  toPorts: *web
b: *web
name: &n x
same: *n
";
        let doc = one(text);
        let web = at(&doc, "ports").value.clone();
        assert_eq!(at(&doc, "a.toPorts").value, web);
        assert_eq!(at(&doc, "b").value, web);
        assert_eq!(at(&doc, "same").value, Value::String("x".into()));
        // The copy sits at the alias; its insides keep the anchor's lines.
        assert_eq!(at(&doc, "a.toPorts").line, 5);
        assert_eq!(at(&doc, "a.toPorts[1].port").line, 3);

        // Root 1, keys 4, a 1 + its anchor's copy 1, b 1, c 2 + its anchor's copy 2, d 2: 14.
        let text = "a: &x 1\nb: *x\nc: &y [2]\nd: *y\n";
        let limits = |max_nodes| Limits { max_nodes, ..Limits::default() };
        assert!(parse_documents(text, &limits(14)).is_ok());
        let err = parse_documents(text, &limits(13)).unwrap_err();
        assert_eq!((err.line, err.column), (4, 4));
        // An alias that would land its copy too deep is refused too.
        let text = "a: &x [[1]]\nb: [[*x]]\n";
        let limits = Limits { max_depth: 4, ..Limits::default() };
        assert_eq!(parse_documents(text, &limits).unwrap_err().message, "alias expands deeper than 4 levels");
    }

    #[test]
    fn aliases_cannot_reach_open_anchors_or_other_documents() {
        let msg = "alias to an anchor that is not complete in this document";
        assert_eq!(parse("a: &x [1, *x]\n").unwrap_err().message, msg);
        let err = parse("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (3, msg));
        assert_eq!(parse("a: *nope\n").unwrap_err().line, 1);
    }

    #[test]
    fn invalid_yaml_reports_line_and_column() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 2), "{err}");
        let err = parse("a: 1\n  b: 2\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 4), "{err}");
        assert!(err.message.contains("mapping values are not allowed"), "{err}");
    }

    #[test]
    fn rendered_yaml_reads_back_as_the_same_value() {
        let value = serde_json::json!({
            "spec": {"ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}], "empty": {}, "none": []},
            "tricky": ["yes", "on", "null", "~", "", " lead", "trail ", "a: b", "a #c", "end:", "k8s:app", "-x", "- x",
                "0x1F", "1e3", ".inf", "1_000", "12:30", "it's", "say \"hi\"", "back\\slash", "tab\there", "line\nbreak",
                "#comment", "&anchor", "*alias", "!tag", "%dir", "@at", "`tick", "[flow]", "{map}", "x,y", "ünïcödé"],
            "nested": [[1, 2], [], [{"a": null, "b": true, "c": 1.5}]],
            "self.branch != '' ? 1 : 2": -7,
        });
        let text = to_yaml(&value);
        let docs = parse_documents(&text, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(docs[0].to_json(), value, "{text}");
        assert!(
            text.starts_with(
                "spec:\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"80\"\n        protocol: TCP\n"
            ),
            "{text}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_string_survives_rendering(strings in proptest::collection::vec("[a-zA-Z0-9 :#'\"\\!&*%@`{}\\[\\],|>.~_/\t-]{0,12}", 1..6)) {
            let value = serde_json::json!({"items": strings, "key": strings[0], "map": {(strings[0].clone()): 1}});
            let text = to_yaml(&value);
            let docs = parse_documents(&text, &Limits::default()).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            proptest::prop_assert_eq!(docs[0].to_json(), value);
        }
    }
}
