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
    /// Training produced a non-finite loss, gradient or weight (diverged), or a row carries
    /// non-finite values.
    #[error("non-finite value at step {step} in {term}{}", nonfinite_advice(.row))]
    NonFinite {
        /// Training step.
        step: u64,
        /// Which loss term or tensor.
        term: String,
        /// The offending row id, when known.
        row: Option<u64>,
    },
    /// The run was asked to stop (SIGINT/SIGTERM) and wrote a checkpoint first.
    #[error(
        "stopped at step {step}; checkpoint written in {dir}: run the same command with --resume to continue"
    )]
    Interrupted {
        /// Steps done (the checkpoint's step).
        step: u64,
        /// The run directory.
        dir: PathBuf,
    },
    /// The model would not fit in memory; refused before allocating.
    #[error(
        "the student needs about {need_gib:.1} GiB for weights, gradients and optimizer state ({params} parameters), and {available_gib:.1} GiB is available: make it smaller"
    )]
    TooLarge {
        /// Parameters of the model.
        params: u64,
        /// Estimated bytes needed, in GiB.
        need_gib: f64,
        /// Memory available, in GiB.
        available_gib: f64,
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

/// The advice of a [`StudentError::NonFinite`]: the row when one is to blame, else the usual
/// causes of divergence.
fn nonfinite_advice(row: &Option<u64>) -> String {
    match row {
        Some(r) => format!(" (row {r} of the dataset): check that row"),
        None => ": the run diverged; lower the learning rate (--lr), add --clip-norm, or check the loss weights".into(),
    }
}
