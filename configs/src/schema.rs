//! Typing a [`Node`] tree into config structs, collecting every error on the way, and turning
//! config structs back into plain values for dumping.
//!
//! Config sections are declared with [`section!`](crate::section) and enumerations with
//! [`choice!`](crate::choice); both generate the struct, its defaults, its reader, its writer
//! and its entry in the field reference from one list, so a field cannot be documented,
//! defaulted and parsed inconsistently.

use std::collections::HashMap;

use crate::error::{closest, ConfigError, Location};
use crate::tree::{Mark, Node, NodeKind};

/// One place config text came from: a file, or a `--set` flag.
#[derive(Debug, Clone)]
pub struct Origin {
    pub name: String,
    /// Files get line:column in messages; a `--set` flag is named by itself.
    pub is_file: bool,
}

/// State of one typing pass: the origins, the errors so far, and where each key was written
/// (so semantic checks run after typing can still point at a line).
pub struct Ctx<'a> {
    origins: &'a [Origin],
    errors: Vec<ConfigError>,
    written: HashMap<String, Mark>,
}

impl<'a> Ctx<'a> {
    pub fn new(origins: &'a [Origin]) -> Self {
        Self {
            origins,
            errors: Vec::new(),
            written: HashMap::new(),
        }
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn location(&self, mark: Mark) -> Option<Location> {
        let origin = self.origins.get(mark.origin)?;
        Some(if origin.is_file {
            Location {
                origin: origin.name.clone(),
                line: mark.line,
                col: mark.col,
            }
        } else {
            Location {
                origin: origin.name.clone(),
                line: 0,
                col: 0,
            }
        })
    }

    /// Records that `path` was written at `mark`.
    pub fn wrote(&mut self, path: &str, mark: Mark) {
        self.written.insert(path.to_string(), mark);
    }

    /// Whether the user wrote `path` (as opposed to it taking its default).
    pub fn was_written(&self, path: &str) -> bool {
        self.written.contains_key(path)
    }

    pub fn error_at(&mut self, path: &str, mark: Mark, message: impl Into<String>) {
        let location = self.location(mark);
        self.errors
            .push(ConfigError::new(path, location, message.into()));
    }

    /// An error about a value that may or may not have been written: points at the key if it
    /// was, else at its nearest written parent section, else at the first file.
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        // A value that already failed to type holds its default; judging it would mislead.
        if self.errors.iter().any(|e| e.path == path) {
            return;
        }
        let mut probe = path;
        let mark = loop {
            if let Some(m) = self.written.get(probe) {
                break Some(*m);
            }
            match probe.rfind('.') {
                Some(i) => probe = &probe[..i],
                None => break None,
            }
        };
        let location = match mark {
            Some(m) => self.location(m),
            None => self.origins.iter().find(|o| o.is_file).map(|o| Location {
                origin: o.name.clone(),
                line: 0,
                col: 0,
            }),
        };
        self.errors
            .push(ConfigError::new(path, location, message.into()));
    }

    /// Checks `ok`, recording `message` against `path` when it does not hold.
    pub fn check(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.error(path, message());
        }
    }

    pub fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        self.error_at(
            path,
            node.mark,
            format!("expected {expected}, got {}", node.describe()),
        );
    }

    pub fn unknown_key(&mut self, path: &str, mark: Mark, key: &str, allowed: &[&str]) {
        let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let full = |k: &str| {
            if parent.is_empty() {
                k.to_string()
            } else {
                format!("{parent}.{k}")
            }
        };
        let message = match closest(key, allowed) {
            Some(s) => format!("unknown key; did you mean {}?", full(s)),
            None => format!("unknown key; valid keys here: {}", allowed.join(", ")),
        };
        self.error_at(path, mark, message);
    }
}

/// `parent.child`, or `child` at the top.
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Reading a typed value from a node. Errors go to `cx`; `None` means "an error was recorded,
/// keep the default".
///
/// The schema also describes itself for the generated field reference
/// ([`crate::reference`]): [`FromNode::kind`], [`FromNode::allowed`] and, for sections,
/// [`FromNode::fields`].
pub trait FromNode: Sized {
    /// What a user must write, for messages: "an integer", "a list of strings".
    fn expected() -> String;
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self>;

    /// The type as the field reference names it; by default what messages say.
    fn kind() -> String {
        Self::expected()
    }

    /// The spellings an enumeration accepts; empty for other types.
    fn allowed() -> &'static [&'static str] {
        &[]
    }

    /// A section's fields (and theirs, recursively), keys relative to the section; empty for a
    /// plain value.
    fn fields() -> Vec<FieldDoc> {
        Vec::new()
    }

    /// The type's doc comment (a section's or an enumeration's), as one paragraph.
    fn doc() -> String {
        String::new()
    }
}

/// Doc comment lines as one paragraph.
pub fn doc_text(lines: &[&str]) -> String {
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

/// One field of a config schema, for the generated reference.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDoc {
    /// Dotted key, relative to the section that lists it; `[]` stands for any list item.
    pub key: String,
    /// The type, as [`FromNode::kind`] names it.
    pub kind: String,
    /// The value a config gets when it does not write this field.
    pub default: Value,
    /// For an enumeration (or an optional one, or a list of them): the accepted spellings.
    pub allowed: &'static [&'static str],
    /// The field's doc comment in the schema, else its type's, as one paragraph.
    pub doc: String,
    /// A section: its own fields follow it.
    pub section: bool,
}

impl FieldDoc {
    /// Adds field `key` of type `T`, then `T`'s own fields under it (for a section). `default`
    /// is the field's default in the enclosing section; where it is a mapping it also gives the
    /// defaults of the fields under it.
    pub fn push<T: FromNode>(out: &mut Vec<FieldDoc>, key: &str, default: Value, doc: &[&str]) {
        let nested = T::fields();
        let doc = match doc_text(doc) {
            d if d.is_empty() => T::doc(),
            d => d,
        };
        out.push(FieldDoc {
            key: key.to_string(),
            kind: T::kind(),
            default: default.clone(),
            allowed: T::allowed(),
            doc,
            section: !nested.is_empty(),
        });
        for mut f in nested {
            if let Some(v) = default.lookup(&f.key) {
                f.default = v.clone();
            }
            f.key = if f.key.starts_with('[') {
                format!("{key}{}", f.key)
            } else {
                format!("{key}.{}", f.key)
            };
            out.push(f);
        }
    }
}

/// "a list of strings", or "a list (each item ...)" where a plural would not read.
fn list_of(item: &str) -> String {
    let bare = item.strip_prefix("an ").or_else(|| item.strip_prefix("a "));
    match bare {
        Some(b) if !b.contains([',', '(', '`', '"']) && !b.contains(" or ") => {
            format!("a list of {b}s")
        }
        _ => format!("a list (each item {item})"),
    }
}

/// A plain value tree for dumping configs (and for free-form parameters).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
}

pub trait ToValue {
    fn to_value(&self) -> Value;
}

fn scalar_text<'n, T: FromNode>(node: &'n Node, path: &str, cx: &mut Ctx) -> Option<&'n str> {
    match &node.kind {
        NodeKind::Scalar { text, .. } if !node.is_null() => Some(text.as_str()),
        _ => {
            cx.type_error(node, path, &T::expected());
            None
        }
    }
}

/// YAML 1.1 and 1.2 spellings of booleans (PyYAML accepts yes/no/on/off).
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A float in any of the spellings users write: `1e-4`, `1.0e-4`, `0.0001`, `.5`, `.inf`.
pub fn parse_float(text: &str) -> Option<f64> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        ".inf" | "+.inf" => return Some(f64::INFINITY),
        "-.inf" => return Some(f64::NEG_INFINITY),
        ".nan" => return Some(f64::NAN),
        _ => {}
    }
    // Rust's parser accepts "inf" and "nan" words, YAML does not.
    if t.chars()
        .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

/// An integer, also when written in float notation with an integral value (`1e5`).
fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim().replace('_', "");
    if let Ok(v) = t.parse::<i64>() {
        return Some(v);
    }
    let f = parse_float(&t)?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

impl FromNode for bool {
    fn expected() -> String {
        "true or false".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        let text = scalar_text::<Self>(node, path, cx)?;
        let v = parse_bool(text);
        if v.is_none() {
            cx.type_error(node, path, &Self::expected());
        }
        v
    }
}

impl FromNode for i64 {
    fn expected() -> String {
        "an integer".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        let text = scalar_text::<Self>(node, path, cx)?;
        let v = parse_int(text);
        if v.is_none() {
            cx.type_error(node, path, &Self::expected());
        }
        v
    }
}

impl FromNode for usize {
    fn expected() -> String {
        "a non-negative integer".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        let text = scalar_text::<Self>(node, path, cx)?;
        let v = parse_int(text).and_then(|v| usize::try_from(v).ok());
        if v.is_none() {
            cx.type_error(node, path, &Self::expected());
        }
        v
    }
}

impl FromNode for f64 {
    fn expected() -> String {
        "a number".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        let text = scalar_text::<Self>(node, path, cx)?;
        let v = parse_float(text);
        if v.is_none() {
            cx.type_error(node, path, &Self::expected());
        }
        v
    }
}

impl FromNode for String {
    fn expected() -> String {
        "a string".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        scalar_text::<Self>(node, path, cx).map(str::to_string)
    }
}

impl<T: FromNode> FromNode for Option<T> {
    fn expected() -> String {
        format!("{} or null", T::expected())
    }
    fn kind() -> String {
        format!("{} or null", T::kind())
    }
    fn allowed() -> &'static [&'static str] {
        T::allowed()
    }
    fn fields() -> Vec<FieldDoc> {
        T::fields()
    }
    fn doc() -> String {
        T::doc()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        if node.is_null() {
            Some(None)
        } else {
            T::from_node(node, path, cx).map(Some)
        }
    }
}

impl<T: FromNode> FromNode for Vec<T> {
    fn expected() -> String {
        let inner = T::expected();
        let inner = inner
            .strip_prefix("an ")
            .or_else(|| inner.strip_prefix("a "))
            .unwrap_or(&inner);
        format!("a list of {inner}s")
    }
    fn kind() -> String {
        list_of(&T::kind())
    }
    fn allowed() -> &'static [&'static str] {
        T::allowed()
    }
    fn fields() -> Vec<FieldDoc> {
        let mut fields = T::fields();
        for f in &mut fields {
            f.key = format!("[].{}", f.key);
        }
        fields
    }
    fn doc() -> String {
        T::doc()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        match &node.kind {
            NodeKind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match T::from_node(item, &format!("{path}[{i}]"), cx) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                cx.type_error(node, path, &Self::expected());
                None
            }
        }
    }
}

impl FromNode for Value {
    fn expected() -> String {
        "any value".into()
    }
    fn from_node(node: &Node, _path: &str, _cx: &mut Ctx) -> Option<Self> {
        Some(Value::of(node))
    }
}

impl Value {
    /// The value at a dotted key inside nested mappings.
    pub fn lookup(&self, dotted: &str) -> Option<&Value> {
        dotted.split('.').try_fold(self, |v, key| match v {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        })
    }

    /// Resolves a node the way YAML's core schema would: plain `null`, booleans and numbers
    /// become typed values, everything else a string.
    pub fn of(node: &Node) -> Value {
        match &node.kind {
            _ if node.is_null() => Value::Null,
            NodeKind::Scalar { text, quoted: true } => Value::Str(text.clone()),
            NodeKind::Scalar {
                text,
                quoted: false,
            } => {
                match text.to_ascii_lowercase().as_str() {
                    "true" => return Value::Bool(true),
                    "false" => return Value::Bool(false),
                    _ => {}
                }
                if let Ok(i) = text.parse::<i64>() {
                    Value::Int(i)
                } else if let Some(f) = parse_float(text) {
                    Value::Float(f)
                } else {
                    Value::Str(text.clone())
                }
            }
            NodeKind::Seq(items) => Value::List(items.iter().map(Value::of).collect()),
            NodeKind::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, n)| (k.text.clone(), Value::of(n)))
                    .collect(),
            ),
        }
    }
}

/// Free-form `key: value` parameters (benchmark parameters, Census filters), in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params(pub Vec<(String, Value)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl FromNode for Params {
    fn expected() -> String {
        "a mapping".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        match Value::from_node(node, path, cx)? {
            Value::Map(entries) => Some(Params(entries)),
            _ => {
                cx.type_error(node, path, &Self::expected());
                None
            }
        }
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Float(*self)
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: ToValue> ToValue for Vec<T> {
    fn to_value(&self) -> Value {
        Value::List(self.iter().map(ToValue::to_value).collect())
    }
}
impl ToValue for Params {
    fn to_value(&self) -> Value {
        Value::Map(self.0.clone())
    }
}

/// Reads the entries of a mapping node, or records a type error.
pub fn map_entries<'n>(
    node: &'n Node,
    path: &str,
    cx: &mut Ctx,
    expected: &str,
) -> Option<&'n [(crate::tree::Key, Node)]> {
    match &node.kind {
        NodeKind::Map(entries) => Some(entries),
        _ => {
            cx.type_error(node, path, expected);
            None
        }
    }
}

/// Declares a config section: the struct, its `Default`, its reader (strict about unknown keys),
/// its writer and its fields for the reference, from one list of `field: Type = default` lines.
/// The section and its fields take doc comments only (they become the reference's text).
#[macro_export]
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The keys this section accepts, in documentation order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }

        impl $crate::schema::FromNode for $name {
            fn expected() -> String {
                format!("a mapping ({} section)", stringify!($name))
            }
            fn kind() -> String {
                "a section".into()
            }
            fn doc() -> String {
                $crate::schema::doc_text(&[$($sdoc),*])
            }
            fn fields() -> Vec<$crate::schema::FieldDoc> {
                let defaults = Self::default();
                let mut out = Vec::new();
                $(
                    $crate::schema::FieldDoc::push::<$ty>(
                        &mut out,
                        stringify!($field),
                        $crate::schema::ToValue::to_value(&defaults.$field),
                        &[$($doc),*],
                    );
                )*
                out
            }
            fn from_node(
                node: &$crate::tree::Node,
                path: &str,
                cx: &mut $crate::schema::Ctx,
            ) -> Option<Self> {
                let entries = $crate::schema::map_entries(node, path, cx, &Self::expected())?;
                let mut out = Self::default();
                for (key, value) in entries {
                    let child = $crate::schema::join(path, &key.text);
                    // A value merged from a `--set` flag is reported at that flag.
                    cx.wrote(&child, if value.mark.origin != key.mark.origin { value.mark } else { key.mark });
                    match key.text.as_str() {
                        $(
                            stringify!($field) => {
                                if let Some(v) = <$ty as $crate::schema::FromNode>::from_node(value, &child, cx) {
                                    out.$field = v;
                                }
                            }
                        )*
                        other => cx.unknown_key(&child, key.mark, other, Self::FIELDS),
                    }
                }
                Some(out)
            }
        }

        impl $crate::schema::ToValue for $name {
            fn to_value(&self) -> $crate::schema::Value {
                $crate::schema::Value::Map(vec![
                    $( (stringify!($field).to_string(), $crate::schema::ToValue::to_value(&self.$field)), )*
                ])
            }
        }
    };
}

/// Declares an enumeration written as one of a fixed set of strings (its own doc comment becomes
/// the reference's text for fields of this type that have none).
#[macro_export]
macro_rules! choice {
    (
        $(#[doc = $edoc:literal])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[doc = $edoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )* }

        impl $name {
            /// Every accepted spelling, in documentation order.
            pub const ALLOWED: &'static [&'static str] = &[$($text),*];

            pub fn as_str(&self) -> &'static str {
                match self { $( Self::$variant => $text, )* }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $( $text => Some(Self::$variant), )* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::schema::FromNode for $name {
            fn expected() -> String {
                format!("one of {}", $crate::error::one_of(Self::ALLOWED))
            }
            fn kind() -> String {
                "one of the allowed values".into()
            }
            fn doc() -> String {
                $crate::schema::doc_text(&[$($edoc),*])
            }
            fn allowed() -> &'static [&'static str] {
                Self::ALLOWED
            }
            fn from_node(
                node: &$crate::tree::Node,
                path: &str,
                cx: &mut $crate::schema::Ctx,
            ) -> Option<Self> {
                let text = <String as $crate::schema::FromNode>::from_node(node, path, cx)?;
                let parsed = Self::parse(&text);
                if parsed.is_none() {
                    let hint = $crate::error::closest(&text, Self::ALLOWED)
                        .map(|s| format!(" (did you mean \"{s}\"?)"))
                        .unwrap_or_default();
                    cx.error_at(
                        path,
                        node.mark,
                        format!(
                            "\"{text}\" is not allowed; expected one of {}{hint}",
                            $crate::error::one_of(Self::ALLOWED)
                        ),
                    );
                }
                parsed
            }
        }

        impl $crate::schema::ToValue for $name {
            fn to_value(&self) -> $crate::schema::Value {
                $crate::schema::Value::Str(self.as_str().to_string())
            }
        }
    };
}
