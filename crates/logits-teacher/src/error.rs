//! Typed errors of the teacher side. Each names the model, the corpus file, the tensor or the
//! row concerned.

use std::path::PathBuf;

/// Everything that can go wrong building a dataset from a teacher.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// ONNX Runtime could not be loaded or initialised.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model file is unreadable or not ONNX, or a tensor name is unknown.
    #[error(transparent)]
    Onnx(#[from] logits_onnx::OnnxError),
    /// ONNX Runtime refused the model or failed while running it.
    #[error("{model}: ONNX Runtime: {message}")]
    Session {
        /// The model file.
        model: PathBuf,
        /// What ONNX Runtime said.
        message: String,
    },
    /// The corpus is unreadable or does not fit the model.
    #[error("{path}: {message}")]
    Corpus {
        /// The corpus file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The build options do not fit the model or each other.
    #[error("{0}")]
    Options(String),
    /// A teacher output holds NaN or infinity.
    #[error(
        "row {row_id}: teacher output {tensor:?} holds a non-finite value ({value}); pass --skip-non-finite to leave such rows out (they are counted in the manifest)"
    )]
    NonFinite {
        /// The row.
        row_id: u64,
        /// The output tensor.
        tensor: String,
        /// The offending value.
        value: f32,
    },
    /// Writing or reading the dataset failed.
    #[error(transparent)]
    Format(#[from] logits_format::FormatError),
    /// The build was asked to stop (SIGINT/SIGTERM); the message says what was kept.
    #[error("stopped before the end{0}; run the same command with --resume to continue")]
    Interrupted(String),
    /// A worker thread stopped unexpectedly.
    #[error("pipeline: {0}")]
    Pipeline(String),
}

/// Result alias of the teacher side.
pub type Result<T, E = TeacherError> = std::result::Result<T, E>;
