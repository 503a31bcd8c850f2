//! Errors of the data crate. Every variant names the file it concerns, and where it can, the
//! object inside the file and what is wrong with it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: file not found", path.display())]
    NotFound { path: PathBuf },

    #[error("{}: {detail}", path.display())]
    NotAnnData { path: PathBuf, detail: String },

    #[error("{}: {object}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        object: String,
        problem: String,
    },

    #[error("{}: reading {object}: {source}", path.display())]
    Hdf5 {
        path: PathBuf,
        object: String,
        #[source]
        source: hdf5::Error,
    },

    #[error("{}: obs column '{column}' not found; existing columns: {}", path.display(), if existing.is_empty() { "(none)".to_string() } else { existing.join(", ") })]
    MissingObsColumn {
        path: PathBuf,
        column: String,
        existing: Vec<String>,
    },

    /// A file that should be SLEAP labels (.slp) but is not one.
    #[error("{}: not a SLEAP labels file: {detail}", path.display())]
    NotLabels { path: PathBuf, detail: String },

    /// A video a labels file refers to whose frames cannot be read.
    #[error("{}: video '{video}': {problem}", labels.display())]
    VideoUnavailable {
        labels: PathBuf,
        video: String,
        problem: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A problem with the inputs as a whole rather than one file (empty path list, bad ratios).
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn invalid(
        path: impl Into<PathBuf>,
        object: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        DataError::Invalid {
            path: path.into(),
            object: object.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
