//! Typed configuration for anvil: the scModelForge family (single-cell foundation models) and the
//! sleap-nn family (pose estimation), loaded from the same YAML files those toolkits accept.
//!
//! Loading is strict and reports every problem at once: unknown keys (with the closest valid
//! key), wrong types, disallowed enumeration values, and semantic checks, each with its dotted
//! path, file and line. `--set a.b=value` overrides are merged into the YAML tree before typing,
//! so they are checked exactly like the file.

pub mod emit;
pub mod error;
pub mod pose_net;
pub mod reference;
pub mod schema;
pub mod scmodelforge;
pub mod sleap;
pub mod tree;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, Location};
pub use schema::{Ctx, FieldDoc, FromNode, Origin, Params, ToValue, Value};
pub use scmodelforge::ScModelForgeConfig;
pub use sleap::SleapNnConfig;
use tree::{Mark, Node};

/// A config root: a family's top-level section with its own semantic checks.
pub trait ConfigRoot: FromNode + ToValue + Default {
    /// The family name shown to users.
    const FAMILY: &'static str;
    fn validate(&self, cx: &mut Ctx);

    /// The fully resolved config as YAML; loading it back gives an equal config.
    fn to_yaml(&self) -> String {
        emit::to_yaml(&self.to_value())
    }
}

impl ConfigRoot for ScModelForgeConfig {
    const FAMILY: &'static str = "scModelForge";
    fn validate(&self, cx: &mut Ctx) {
        ScModelForgeConfig::validate(self, cx)
    }
}

impl ConfigRoot for SleapNnConfig {
    const FAMILY: &'static str = "sleap-nn";
    fn validate(&self, cx: &mut Ctx) {
        SleapNnConfig::validate(self, cx)
    }
}

/// Which toolkit a YAML file is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    ScModelForge,
    SleapNn,
}

const SCMODELFORGE_KEYS: &[&str] = &["data", "tokenizer", "model", "training", "eval", "finetune"];
const SLEAP_KEYS: &[&str] = &["data_config", "model_config", "trainer_config"];

/// A loaded config of either family. There is one per process, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyConfig {
    ScModelForge(ScModelForgeConfig),
    SleapNn(SleapNnConfig),
}

impl AnyConfig {
    pub fn family(&self) -> Family {
        match self {
            AnyConfig::ScModelForge(_) => Family::ScModelForge,
            AnyConfig::SleapNn(_) => Family::SleapNn,
        }
    }

    pub fn to_yaml(&self) -> String {
        match self {
            AnyConfig::ScModelForge(c) => c.to_yaml(),
            AnyConfig::SleapNn(c) => c.to_yaml(),
        }
    }
}

/// Config text from its sources (files, then fragments and `--set` flags merged over them), not
/// yet typed.
#[derive(Debug, Clone)]
pub struct Sources {
    origins: Vec<Origin>,
    tree: Node,
}

impl Sources {
    /// Reads and parses a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", None, format!("cannot read config file {name}: {e}"))
        })?;
        Self::from_str(&text, &name)
    }

    /// Parses YAML text; `name` is how messages refer to it.
    pub fn from_str(text: &str, name: &str) -> Result<Self, ConfigErrors> {
        let tree = tree::parse(text, 0, name)?;
        let sources = Sources {
            origins: vec![Origin {
                name: name.to_string(),
                is_file: true,
            }],
            tree,
        };
        sources.check_top_is_mapping()?;
        Ok(sources)
    }

    fn check_top_is_mapping(&self) -> Result<(), ConfigErrors> {
        if matches!(self.tree.kind, tree::NodeKind::Map(_)) {
            Ok(())
        } else {
            Err(ConfigError::new(
                "",
                Some(Location {
                    origin: self.origins[0].name.clone(),
                    line: self.tree.mark.line,
                    col: self.tree.mark.col,
                }),
                "a config file must be a mapping of sections at the top level",
            )
            .into())
        }
    }

    /// Merges another YAML document over this one (a fragment, or a second file).
    pub fn merge_str(&mut self, text: &str, name: &str) -> Result<(), ConfigErrors> {
        let origin = self.origins.len();
        let node = tree::parse(text, origin, name)?;
        self.origins.push(Origin {
            name: name.to_string(),
            is_file: true,
        });
        self.tree.merge(node);
        Ok(())
    }

    /// Applies one `key.path=value` override; the value is YAML (`1e-3`, `[a, b]`, `null`).
    pub fn apply_override(&mut self, spec: &str) -> Result<(), ConfigErrors> {
        let origin_name = format!("--set {spec}");
        let bad = |msg: String| ConfigErrors::from(ConfigError::new("", None, msg));
        let (key, value) = spec.split_once('=').ok_or_else(|| {
            bad(format!(
                "{origin_name}: expected key.path=value, e.g. --set training.batch_size=32"
            ))
        })?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
            return Err(bad(format!(
                "{origin_name}: '{key}' is not a dotted key path like training.optimizer.lr"
            )));
        }
        let origin = self.origins.len();
        let value_node = tree::parse(value, origin, &origin_name).map_err(|e| {
            bad(format!(
                "{origin_name}: the value is not valid YAML: {}",
                e.message
            ))
        })?;
        self.origins.push(Origin {
            name: origin_name,
            is_file: false,
        });
        let mark = Mark {
            origin,
            line: 1,
            col: 1,
        };
        self.tree.merge(value_node.nest_at(key, mark));
        Ok(())
    }

    /// Which family the top-level keys belong to.
    pub fn family(&self) -> Result<Family, ConfigErrors> {
        let keys = self.tree.keys();
        let is_smf = keys.iter().any(|k| SCMODELFORGE_KEYS.contains(k));
        let is_sleap = keys.iter().any(|k| SLEAP_KEYS.contains(k));
        let here = Some(Location {
            origin: self.origins[0].name.clone(),
            line: 0,
            col: 0,
        });
        match (is_smf, is_sleap) {
            (true, false) => Ok(Family::ScModelForge),
            (false, true) => Ok(Family::SleapNn),
            (true, true) => Err(ConfigError::new(
                "",
                here,
                "mixes scModelForge sections (data, tokenizer, model, training, eval, finetune) \
                 with sleap-nn sections (data_config, model_config, trainer_config); a file \
                 configures one or the other",
            )
            .into()),
            (false, false) => Err(ConfigError::new(
                "",
                here,
                format!(
                    "cannot tell which kind of config this is (top-level keys: {}); an \
                     scModelForge config has {} sections, a sleap-nn config has {}",
                    if keys.is_empty() {
                        "none".to_string()
                    } else {
                        keys.join(", ")
                    },
                    SCMODELFORGE_KEYS.join("/"),
                    SLEAP_KEYS.join("/")
                ),
            )
            .into()),
        }
    }

    /// Types the tree as family `T` and runs its semantic checks; every problem is returned.
    pub fn load_as<T: ConfigRoot>(&self) -> Result<T, ConfigErrors> {
        let mut cx = Ctx::new(&self.origins);
        let config = T::from_node(&self.tree, "", &mut cx).unwrap_or_default();
        // Semantic checks run even after type errors so one run reports everything; a field
        // that failed to type keeps its default, which may add a consequential message.
        config.validate(&mut cx);
        let errors = cx.into_errors();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Detects the family and loads.
    pub fn load(&self) -> Result<AnyConfig, ConfigErrors> {
        match self.family()? {
            Family::ScModelForge => self.load_as().map(AnyConfig::ScModelForge),
            Family::SleapNn => self.load_as().map(AnyConfig::SleapNn),
        }
    }
}

/// Loads a config file with `--set` overrides applied, detecting its family.
pub fn load_file(path: &Path, overrides: &[String]) -> Result<AnyConfig, ConfigErrors> {
    let mut sources = Sources::from_file(path)?;
    for spec in overrides {
        sources.apply_override(spec)?;
    }
    sources.load()
}

/// Loads a config file that must be of family `T`.
pub fn load_file_as<T: ConfigRoot>(path: &Path, overrides: &[String]) -> Result<T, ConfigErrors> {
    let mut sources = Sources::from_file(path)?;
    for spec in overrides {
        sources.apply_override(spec)?;
    }
    sources.load_as()
}
