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

mod emit;
pub use emit::to_yaml;

#[cfg(test)]
mod tests;
