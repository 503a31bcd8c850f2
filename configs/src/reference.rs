//! The field reference of a config family, generated from its typed schema (the
//! [`section!`](crate::section) and [`choice!`](crate::choice) declarations and the hand-written
//! readers): every field by dotted key, with its type, default, allowed values and description,
//! as Markdown. Nothing here lists fields by hand, so the reference cannot drift from what
//! loading accepts.

use crate::emit::inline;
use crate::schema::{FieldDoc, FromNode, Value};
use crate::{ConfigRoot, Family, ScModelForgeConfig, SleapNnConfig};

impl Family {
    /// Where the family's schema is declared.
    pub fn schema_file(self) -> &'static str {
        match self {
            Family::ScModelForge => "configs/src/scmodelforge.rs",
            Family::SleapNn => "configs/src/sleap.rs",
        }
    }

    /// Every field of the family's config, in declaration order, keys from the top.
    pub fn fields(self) -> Vec<FieldDoc> {
        match self {
            Family::ScModelForge => ScModelForgeConfig::fields(),
            Family::SleapNn => SleapNnConfig::fields(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::ScModelForge => ScModelForgeConfig::FAMILY,
            Family::SleapNn => SleapNnConfig::FAMILY,
        }
    }
}

/// The reference of `family` as Markdown. `generated_by` is the command that writes it, named
/// in its header.
pub fn markdown(family: Family, generated_by: &str) -> String {
    let fields = family.fields();
    let name = family.name();
    let mut out = format!(
        "# {name} configuration reference\n\n\
         <!-- Generated from the typed schema in {} by `{generated_by}`; do not edit by hand. -->\n\n\
         Every field anvil reads in a {name} config, by dotted key. A file sets only what it \
         names; every other field takes the default shown. Unknown keys, wrong types and values \
         outside the allowed ones are errors. A field of a section that defaults to `null` takes \
         the default shown here when the section is written.\n",
        family.schema_file()
    );
    let top_level: Vec<&FieldDoc> = fields
        .iter()
        .filter(|f| !f.key.contains(['.', '[']) && !f.section)
        .collect();
    if !top_level.is_empty() {
        out.push_str("\n## Top level\n\n");
        table(&mut out, top_level);
    }
    for section in fields
        .iter()
        .filter(|f| f.section && !f.key.contains(['.', '[']))
    {
        out.push_str(&format!("\n## `{}`\n\n", section.key));
        if !section.doc.is_empty() {
            out.push_str(&format!("{}\n\n", section.doc));
        }
        let prefix = format!("{}.", section.key);
        table(
            &mut out,
            fields
                .iter()
                .filter(|f| f.key.starts_with(&prefix))
                .collect(),
        );
    }
    out
}

fn table(out: &mut String, rows: Vec<&FieldDoc>) {
    out.push_str("| key | type | default | allowed values | description |\n");
    out.push_str("|---|---|---|---|---|\n");
    for f in rows {
        let default = match &f.default {
            Value::Map(_) if f.section => String::new(),
            v => code(&inline(v)),
        };
        let allowed: Vec<String> = f.allowed.iter().map(|a| code(a)).collect();
        out.push_str(&format!(
            "| {} | {} | {default} | {} | {} |\n",
            code(&f.key),
            cell(&f.kind),
            allowed.join(", "),
            cell(&f.doc)
        ));
    }
}

/// Text that cannot break a table row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A value or key in a code span.
fn code(text: &str) -> String {
    let fence = if text.contains('`') { "``" } else { "`" };
    format!("{fence}{}{fence}", cell(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(family: Family, key: &str) -> FieldDoc {
        family
            .fields()
            .into_iter()
            .find(|f| f.key == key)
            .unwrap_or_else(|| panic!("{key} is not in the reference"))
    }

    #[test]
    fn fields_carry_type_default_allowed_values_and_docs() {
        let f = field(Family::ScModelForge, "training.precision");
        assert_eq!(f.kind, "one of the allowed values");
        assert_eq!(f.default, Value::Str("bf16-mixed".into()));
        assert_eq!(f.allowed, &["32", "16-mixed", "bf16-mixed"]);
        let f = field(Family::ScModelForge, "training.batch_size");
        assert_eq!(f.kind, "a non-negative integer");
        assert_eq!(f.default, Value::Int(64));
        assert_eq!(f.doc, "Cells per worker per micro-batch (as in Lightning).");
        let f = field(Family::ScModelForge, "data.paths");
        assert_eq!(f.kind, "a list of strings");
        // Sections nest; an optional section's fields carry their defaults for when it is set.
        assert!(field(Family::ScModelForge, "training.optimizer").section);
        let f = field(Family::ScModelForge, "finetune");
        assert_eq!((f.section, &f.default), (true, &Value::Null));
        assert_eq!(
            field(Family::ScModelForge, "finetune.lora.rank").default,
            Value::Int(8)
        );
        let f = field(Family::ScModelForge, "training.scheduler.warmup_steps");
        assert_eq!(f.default, Value::Int(2000));
    }

    #[test]
    fn every_key_loads_and_every_section_field_is_listed() {
        for family in [Family::ScModelForge, Family::SleapNn] {
            let fields = family.fields();
            let keys: Vec<&str> = fields.iter().map(|f| f.key.as_str()).collect();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                keys.len(),
                "{family:?}: a key is listed twice"
            );
            assert!(fields.iter().all(|f| !f.kind.is_empty()));
        }
        // The top-level sections of each family are all there.
        for key in ["data", "tokenizer", "model", "training", "eval", "finetune"] {
            assert!(field(Family::ScModelForge, key).section, "{key}");
        }
        for key in ["data_config", "model_config", "trainer_config"] {
            assert!(field(Family::SleapNn, key).section, "{key}");
        }
    }

    #[test]
    fn markdown_has_a_table_per_section() {
        let md = markdown(Family::ScModelForge, "coordinator config reference");
        assert!(
            md.starts_with("# scModelForge configuration reference\n"),
            "{md}"
        );
        assert!(md.contains("\n## `training`\n"), "{md}");
        assert!(
            md.contains(
                "| `training.precision` | one of the allowed values | `bf16-mixed` | `32`, `16-mixed`, `bf16-mixed` |"
            ),
            "{md}"
        );
        let md = markdown(Family::SleapNn, "coordinator config reference");
        assert!(md.contains("\n## Top level\n"), "{md}");
        assert!(md.contains("| `trainer_config.max_epochs` |"), "{md}");
    }
}
