//! Config errors: each names the dotted key, where it was written, and what is allowed.

use std::fmt;

/// Where a problem was written: a file (or a `--set` flag) with a 1-based line and column.
/// `line == 0` means the origin as a whole (e.g. a key that was never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.origin)
        } else {
            write!(f, "{}:{}:{}", self.origin, self.line, self.col)
        }
    }
}

/// One problem with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `training.optimizer.lr`; empty for the document as a whole.
    pub path: String,
    pub location: Option<Location>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &str, location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            location,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, in the order they were found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (c, strsim::damerau_levenshtein(&lower, &c.to_lowercase())))
        .filter(|(c, d)| {
            // Allow about one edit per three characters, and always case-only differences.
            *d <= (c.len().max(word.len()) / 3).max(1) || c.eq_ignore_ascii_case(word)
        })
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| *c)
        .or_else(|| {
            // A key written without its underscores (`batchsize`) or with extra words.
            candidates
                .iter()
                .find(|c| c.replace('_', "") == lower.replace(['_', '-'], ""))
                .copied()
        })
}

/// `"a", "b" or "c"` for messages listing allowed values.
pub fn one_of(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["batch_size", "max_epochs", "seed", "strategy"];
        assert_eq!(closest("batchsize", &keys), Some("batch_size"));
        assert_eq!(closest("max_epoch", &keys), Some("max_epochs"));
        assert_eq!(closest("Seed", &keys), Some("seed"));
        assert_eq!(closest("learning_rate", &keys), None);
    }

    #[test]
    fn lists_values() {
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }
}
