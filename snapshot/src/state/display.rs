//! Rendering a section's CBOR value as an indented tree, for `inspect`.
//!
//! Works on any section, known or not, because CBOR describes itself: maps become
//! `key: value` lines, arrays of maps or arrays `- item` lines, and arrays of scalars
//! stay on one line. Long byte strings and arrays are abbreviated so a register dump
//! stays readable.

use std::fmt::Write;

use ciborium::Value;

/// Byte strings longer than this show only their first `BYTES_SHOWN` bytes.
const BYTES_IN_FULL: usize = 64;
const BYTES_SHOWN: usize = 32;
/// Arrays of scalars print on one line, showing at most this many items.
const ITEMS_SHOWN: usize = 16;

/// Renders `value` as an indented tree; every line ends with a newline.
pub fn render_value(value: &Value) -> String {
    let mut out = String::new();
    render_into(&mut out, value, 0);
    out
}

fn render_into(out: &mut String, value: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        Value::Map(entries) if !entries.is_empty() => {
            for (key, item) in entries {
                let _ = write!(out, "{pad}{}:", key_text(key));
                render_child(out, item, depth);
            }
        }
        Value::Array(items) if !is_inline(items) => {
            for item in items {
                let _ = write!(out, "{pad}-");
                render_child(out, item, depth);
            }
        }
        Value::Tag(tag, inner) => {
            let _ = write!(out, "{pad}tag {tag}:");
            render_child(out, inner, depth);
        }
        _ => {
            let _ = writeln!(out, "{pad}{}", scalar(value));
        }
    }
}

/// Puts a scalar on the current line, or a nested value on the lines below.
fn render_child(out: &mut String, value: &Value, depth: usize) {
    if is_nested(value) {
        out.push('\n');
        render_into(out, value, depth + 1);
    } else {
        let _ = writeln!(out, " {}", scalar(value));
    }
}

fn is_nested(value: &Value) -> bool {
    match value {
        Value::Map(entries) => !entries.is_empty(),
        Value::Array(items) => !is_inline(items),
        Value::Tag(..) => true,
        _ => false,
    }
}

fn is_inline(items: &[Value]) -> bool {
    let simple = |item: &Value| !matches!(item, Value::Array(_) | Value::Map(_) | Value::Tag(..));
    items.iter().all(simple)
}

/// Text keys (struct fields) print bare; other keys as values.
fn key_text(key: &Value) -> String {
    match key {
        Value::Text(text) => text.clone(),
        other => scalar(other),
    }
}

/// One-line text for a value that is not a non-empty map or a long array.
fn scalar(value: &Value) -> String {
    match value {
        Value::Integer(int) => i128::from(*int).to_string(),
        Value::Bytes(bytes) => hex(bytes),
        Value::Float(float) => float.to_string(),
        Value::Text(text) => format!("{text:?}"),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_string(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().take(ITEMS_SHOWN).map(scalar).collect();
            let more = items.len().saturating_sub(ITEMS_SHOWN);
            match more {
                0 => format!("[{}]", parts.join(", ")),
                _ => format!("[{}, ...] ({} items)", parts.join(", "), items.len()),
            }
        }
        Value::Map(_) => "{}".to_string(),
        Value::Tag(tag, inner) => format!("tag {tag} {}", scalar(inner)),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown = if bytes.len() > BYTES_IN_FULL {
        &bytes[..BYTES_SHOWN]
    } else {
        bytes
    };
    let mut text = String::from("h'");
    for byte in shown {
        let _ = write!(text, "{byte:02x}");
    }
    text.push('\'');
    if shown.len() < bytes.len() {
        let _ = write!(text, "... ({} bytes)", bytes.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_values_as_a_tree() {
        let value = Value::Map(vec![
            (Value::Text("id".into()), Value::Integer(3.into())),
            (
                Value::Text("regs".into()),
                Value::Array(vec![Value::Integer(1.into()), Value::Integer(2.into())]),
            ),
            (
                Value::Text("lapic".into()),
                Value::Map(vec![(
                    Value::Text("raw".into()),
                    Value::Bytes(vec![0xab; 100]),
                )]),
            ),
            (Value::Text("name".into()), Value::Text("cpu0".into())),
        ]);
        let text = render_value(&value);
        let expected = format!(
            "id: 3\nregs: [1, 2]\nlapic:\n  raw: h'{}'... (100 bytes)\nname: \"cpu0\"\n",
            "ab".repeat(32)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn long_arrays_are_abbreviated_and_nested_ones_listed() {
        let items: Vec<Value> = (0..20).map(|i| Value::Integer(i.into())).collect();
        let text = render_value(&Value::Array(items.clone()));
        assert!(text.ends_with(", 15, ...] (20 items)\n"), "{text}");
        let nested = Value::Array(vec![Value::Array(items.clone()), Value::Array(items)]);
        let text = render_value(&nested);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.starts_with("- [0, 1,"), "{text}");
    }
}
