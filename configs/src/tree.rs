//! A YAML document as a tree whose every node remembers where it was written.
//!
//! Config errors must name the file and line of the offending key, and overrides given on the
//! command line must be merged before typing, so the loader works on this tree rather than on
//! serde: it keeps positions for every key and lets us report all errors in one pass.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::{ConfigError, Location};

/// Where a node came from: an origin (index into the loader's list of files and `--set`
/// flags) and a 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub origin: usize,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar exactly as written; `quoted` scalars are never null, bool or numbers by
    /// accident of spelling.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub mark: Mark,
}

impl Node {
    pub fn empty_map(mark: Mark) -> Node {
        Node {
            kind: NodeKind::Map(Vec::new()),
            mark,
        }
    }

    /// YAML's null spellings, for plain scalars only.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, quoted: false }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Keys of a mapping, in file order.
    pub fn keys(&self) -> Vec<&str> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().map(|(k, _)| k.text.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// A short description of what the node is, for "expected X, got Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null".to_string(),
            NodeKind::Scalar { text, quoted } => {
                if *quoted {
                    format!("\"{text}\"")
                } else {
                    format!("'{text}'")
                }
            }
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }

    /// Deep-merges `other` over `self`: mappings merge key by key, anything else replaces.
    /// This is how YAML fragments and `--set` overrides apply over a file.
    pub fn merge(&mut self, other: Node) {
        match (&mut self.kind, other.kind) {
            (NodeKind::Map(mine), NodeKind::Map(theirs)) => {
                for (key, value) in theirs {
                    match mine.iter_mut().find(|(k, _)| k.text == key.text) {
                        Some((_, existing)) => existing.merge(value),
                        None => mine.push((key, value)),
                    }
                }
            }
            (_, kind) => {
                self.kind = kind;
                self.mark = other.mark;
            }
        }
    }

    /// Wraps `self` in mappings so it sits at `dotted` (`a.b.c`), for `--set a.b.c=value`.
    pub fn nest_at(self, dotted: &str, mark: Mark) -> Node {
        dotted.rsplit('.').fold(self, |inner, part| Node {
            kind: NodeKind::Map(vec![(
                Key {
                    text: part.to_string(),
                    mark,
                },
                inner,
            )]),
            mark,
        })
    }
}

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(text: &str, origin: usize, origin_name: &str) -> Result<Node, ConfigError> {
    let mut builder = TreeBuilder {
        origin,
        stack: Vec::new(),
        anchors: HashMap::new(),
        documents: Vec::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| {
        let m = e.marker();
        ConfigError::new(
            "",
            Some(Location {
                origin: origin_name.to_string(),
                line: m.line(),
                col: m.col() + 1,
            }),
            format!("YAML syntax error: {}", e.info()),
        )
    })?;
    if let Some((mark, message)) = builder.error {
        return Err(ConfigError::new(
            "",
            Some(Location {
                origin: origin_name.to_string(),
                line: mark.line,
                col: mark.col,
            }),
            message,
        ));
    }
    match builder.documents.len() {
        0 => Ok(Node::empty_map(Mark {
            origin,
            line: 1,
            col: 1,
        })),
        1 => Ok(builder.documents.remove(0)),
        n => Err(ConfigError::new(
            "",
            Some(Location {
                origin: origin_name.to_string(),
                line: 1,
                col: 1,
            }),
            format!("expected one YAML document, found {n} (separated by ---)"),
        )),
    }
}

enum Partial {
    Seq(Vec<Node>, Mark, usize),
    Map(Vec<(Key, Node)>, Option<Key>, Mark, usize),
}

struct TreeBuilder {
    origin: usize,
    stack: Vec<Partial>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
    error: Option<(Mark, String)>,
}

impl TreeBuilder {
    fn mark(&self, m: Marker) -> Mark {
        Mark {
            origin: self.origin,
            line: m.line(),
            col: m.col() + 1,
        }
    }

    fn fail(&mut self, mark: Mark, message: String) {
        if self.error.is_none() {
            self.error = Some((mark, message));
        }
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Partial::Seq(items, _, _)) => items.push(node),
            Some(Partial::Map(entries, pending_key, _, _)) => match pending_key.take() {
                None => {
                    let text = match &node.kind {
                        NodeKind::Scalar { text, .. } => text.clone(),
                        _ => {
                            let mark = node.mark;
                            self.fail(mark, "mapping keys must be plain strings".to_string());
                            return;
                        }
                    };
                    if entries.iter().any(|(k, _)| k.text == text) {
                        let mark = node.mark;
                        self.fail(mark, format!("duplicate key '{text}'"));
                        return;
                    }
                    *pending_key = Some(Key {
                        text,
                        mark: node.mark,
                    });
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        let mark = self.mark(marker);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.push_value(
                    Node {
                        kind: NodeKind::Scalar { text, quoted },
                        mark,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Partial::Seq(Vec::new(), mark, anchor))
            }
            Event::MappingStart(anchor, _) => {
                self.stack
                    .push(Partial::Map(Vec::new(), None, mark, anchor))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Partial::Seq(items, m, a)) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            mark: m,
                        },
                        a,
                    ),
                    Some(Partial::Map(entries, _, m, a)) => (
                        Node {
                            kind: NodeKind::Map(entries),
                            mark: m,
                        },
                        a,
                    ),
                    None => return,
                };
                self.push_value(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push_value(node, 0),
                None => self.fail(mark, "alias refers to an unknown anchor".to_string()),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_and_quoting() {
        let doc = parse("a:\n  b: 1\n  c: 'x'\nd: [1, 2]\n", 0, "t.yaml").unwrap();
        let a = doc.get("a").unwrap();
        assert_eq!(a.get("b").unwrap().mark.line, 2);
        assert_eq!(
            a.get("c").unwrap().kind,
            NodeKind::Scalar {
                text: "x".into(),
                quoted: true
            }
        );
        assert!(matches!(doc.get("d").unwrap().kind, NodeKind::Seq(ref v) if v.len() == 2));
    }

    #[test]
    fn empty_value_is_null() {
        let doc = parse("seed:\nx: ~\n", 0, "t.yaml").unwrap();
        assert!(doc.get("seed").unwrap().is_null());
        assert!(doc.get("x").unwrap().is_null());
    }

    #[test]
    fn duplicate_key_is_an_error_with_line() {
        let err = parse("a: 1\nb: 2\na: 3\n", 0, "t.yaml").unwrap_err();
        assert!(err.to_string().contains("duplicate key 'a'"), "{err}");
        assert!(err.to_string().contains("t.yaml:3"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = parse("a:\n  b: [1, 2\n", 0, "bad.yaml").unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let doc = parse("base: &b {x: 1}\nother: *b\n", 0, "t.yaml").unwrap();
        assert_eq!(
            doc.get("other").unwrap().get("x").unwrap().scalar(),
            Some("1")
        );
    }

    #[test]
    fn merge_replaces_leaves_and_merges_maps() {
        let mut base = parse("a: {x: 1, y: 2}\nb: [1]\n", 0, "t").unwrap();
        let over = parse("a: {y: 3, z: 4}\nb: null\n", 1, "u").unwrap();
        base.merge(over);
        let a = base.get("a").unwrap();
        assert_eq!(a.keys(), vec!["x", "y", "z"]);
        assert_eq!(a.get("y").unwrap().scalar(), Some("3"));
        assert!(base.get("b").unwrap().is_null());
    }
}
