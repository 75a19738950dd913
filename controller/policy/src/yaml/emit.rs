//! JSON values rendered as block YAML, as kubectl prints them.
use super::{Value, resolve_plain};

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
