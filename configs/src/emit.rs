//! Writing a [`Value`] tree as block-style YAML that loads back to the same config.

use crate::schema::{parse_float, Value};

/// Renders a value tree as YAML (a mapping at the top).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Map(entries) => write_map(&mut out, entries, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, entries: &[(String, Value)], indent: usize) {
    if entries.is_empty() {
        out.push_str(&" ".repeat(indent));
        out.push_str("{}\n");
        return;
    }
    for (key, value) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&quote_if_needed(key));
        out.push(':');
        write_child(out, value, indent);
    }
}

/// Writes what follows `key:` — inline for scalars and flat lists, a nested block otherwise.
fn write_child(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            write_map(out, entries, indent + 2);
        }
        Value::List(items) if items.iter().any(is_nested) => {
            out.push('\n');
            for item in items {
                out.push_str(&" ".repeat(indent + 2));
                out.push('-');
                match item {
                    Value::Map(entries) if !entries.is_empty() => {
                        // First entry on the dash line, the rest aligned under it.
                        let mut block = String::new();
                        write_map(&mut block, entries, indent + 4);
                        out.push(' ');
                        out.push_str(block.trim_start());
                    }
                    other => {
                        out.push(' ');
                        out.push_str(&inline(other));
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn is_nested(v: &Value) -> bool {
    matches!(v, Value::Map(e) if !e.is_empty()) || matches!(v, Value::List(l) if !l.is_empty())
}

/// A value in flow style.
pub(crate) fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Str(s) => quote_if_needed(s),
        Value::List(items) => {
            let parts: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Map(entries) => {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", quote_if_needed(k), inline(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Floats always carry a `.` or exponent so they read back as floats.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        ".nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        // PyYAML (what scModelForge and sleap-nn load with) reads a float only with a `.` and a
        // signed exponent: write 1.0e-06 style, not Rust's 1e-6.
        let text = format!("{f:?}");
        match text.split_once('e') {
            Some((mantissa, exp)) => {
                let mantissa = if mantissa.contains('.') {
                    mantissa.to_string()
                } else {
                    format!("{mantissa}.0")
                };
                let exp = if exp.starts_with('-') {
                    exp.to_string()
                } else {
                    format!("+{exp}")
                };
                format!("{mantissa}e{exp}")
            }
            None => text,
        }
    }
}

/// Quotes a string whose plain spelling YAML would read as something else.
fn quote_if_needed(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let reserved = matches!(
        lower.as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    );
    let numeric = parse_float(s).is_some() || s.parse::<i64>().is_ok();
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '/' | '<' | '(' | '+'));
    let chars_ok = s
        .chars()
        .all(|c| c.is_alphanumeric() || " _-./<>()+=,;^$".contains(c))
        && !s.ends_with(' ')
        && !s.contains(" #");
    if reserved || numeric || !first_ok || !chars_ok {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .replace('\t', "\\t");
        format!("\"{escaped}\"")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_ambiguous_strings() {
        assert_eq!(quote_if_needed("32"), "\"32\"");
        assert_eq!(quote_if_needed("1e-4"), "\"1e-4\"");
        assert_eq!(quote_if_needed("null"), "\"null\"");
        assert_eq!(quote_if_needed("Homo sapiens"), "Homo sapiens");
        assert_eq!(quote_if_needed("data/pbmc.h5ad"), "data/pbmc.h5ad");
        assert_eq!(quote_if_needed("a: b"), "\"a: b\"");
        assert_eq!(quote_if_needed(""), "\"\"");
    }

    #[test]
    fn floats_stay_floats() {
        assert_eq!(float_text(10000.0), "10000.0");
        assert_eq!(float_text(1e-8), "1.0e-8");
        assert_eq!(float_text(2.5e-7), "2.5e-7");
        assert_eq!(float_text(1e300), "1.0e+300");
    }

    #[test]
    fn nested_lists_of_maps() {
        let v = Value::Map(vec![(
            "b".into(),
            Value::List(vec![
                Value::Str("x".into()),
                Value::Map(vec![
                    ("name".into(), Value::Str("lp".into())),
                    ("k".into(), Value::Int(1)),
                ]),
            ]),
        )]);
        assert_eq!(to_yaml(&v), "b:\n  - x\n  - name: lp\n    k: 1\n");
    }
}
