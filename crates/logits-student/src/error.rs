//! Typed errors of the student side. Each names the dataset, column, file, step or row it is
//! about, so the message printed at the command line is enough to act on.

use std::path::PathBuf;

/// Everything that can go wrong training, evaluating or exporting a student.
#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    /// Reading the dataset failed (the format library's error names the file).
    #[error(transparent)]
    Format(#[from] logits_format::FormatError),
    /// The dataset lacks what the chosen losses or model need.
    #[error("{dataset}: {what}")]
    Dataset {
        /// The dataset directory.
        dataset: PathBuf,
        /// What is missing or wrong, and which option asked for it.
        what: String,
    },
    /// A configuration value is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint or exported file is unreadable or does not fit the run.
    #[error("{path}: {why}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Training produced a non-finite loss (diverged), or a row carries non-finite values.
    #[error(
        "non-finite value at step {step} ({term}); lower the learning rate or check row {row:?}"
    )]
    NonFinite {
        /// Training step.
        step: u64,
        /// Which loss term or tensor.
        term: String,
        /// The offending row id, when known.
        row: Option<u64>,
    },
    /// A row of the dataset disagrees with the corpus it is joined with.
    #[error("{path}: row {row}: {why}")]
    Join {
        /// The corpus file.
        path: PathBuf,
        /// The row id.
        row: u64,
        /// What disagrees.
        why: String,
    },
}

/// Result with [`StudentError`].
pub type Result<T> = std::result::Result<T, StudentError>;

/// Wraps an I/O error with the path it happened on.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StudentError {
    let path = path.into();
    move |source| StudentError::Io { path, source }
}
