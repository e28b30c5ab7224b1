//! Typed errors of the format library. Every variant names the file, column, shard or row
//! it is about, so a message printed at the command line is enough to find the problem.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or validating a dataset.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An operating-system I/O error on a named path (disk full, permission, missing file).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `manifest.json` (or a build record) is not valid JSON or does not fit the schema.
    #[error("{path}: malformed manifest: {message}")]
    MalformedManifest {
        /// The manifest file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The dataset was written by a format major version this library does not know.
    #[error(
        "{path}: dataset format version {found} is not supported (this build of logits reads {supported}.x); upgrade logits to read it"
    )]
    UnsupportedVersion {
        /// The manifest or shard carrying the version.
        path: PathBuf,
        /// The version found.
        found: String,
        /// The major version this library reads.
        supported: u32,
    },
    /// A shard path in the manifest would leave the dataset directory.
    #[error("{path}: shard path {shard:?} is not allowed: {why}")]
    UnsafePath {
        /// The manifest naming the path.
        path: PathBuf,
        /// The offending shard path as written.
        shard: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// A Parquet file could not be read or written.
    #[error("{path}: parquet: {message}")]
    Parquet {
        /// The shard file.
        path: PathBuf,
        /// The Parquet/Arrow library's message.
        message: String,
    },
    /// A shard disagrees with what the manifest says about it.
    #[error("{path}: {message}")]
    ShardMismatch {
        /// The shard file.
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// A row handed to the writer breaks the contract (bad id, NaN value, wrong length...).
    #[error("row {row_id}: {column}: {message}")]
    InvalidRow {
        /// The stable row id of the offending row.
        row_id: u64,
        /// The column or tensor concerned.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A batch handed to the writer is internally inconsistent (a programming error upstream).
    #[error("invalid batch for {column}: {message}")]
    InvalidBatch {
        /// The column concerned.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// The manifest asks for something the format cannot represent.
    #[error("invalid dataset spec: {0}")]
    InvalidSpec(String),
    /// A requested column is not in the dataset.
    #[error("{path}: dataset has no column {column:?} ({why})")]
    MissingColumn {
        /// The dataset directory.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// Why it was wanted.
        why: String,
    },
    /// The output directory already holds a different dataset or an unfinished build.
    #[error("{path}: {message}")]
    OutputConflict {
        /// The output directory.
        path: PathBuf,
        /// What is there and what to do.
        message: String,
    },
    /// The background prefetch thread stopped unexpectedly.
    #[error("reader thread failed: {0}")]
    Reader(String),
    /// A corpus file is unreadable or does not fit the model or the dataset.
    #[error("{path}: {message}")]
    Corpus {
        /// The corpus file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Corpus options do not fit the model (an unknown input name, no file given).
    #[error("{0}")]
    CorpusOptions(String),
    /// A row or batch of a shard breaks the contract; says which shard.
    #[error("{path}: {source}")]
    InShard {
        /// The shard file (or URL).
        path: PathBuf,
        /// What is wrong (names the row and column).
        source: Box<FormatError>,
    },
    /// An object store refused or failed a request (the message names the URL).
    #[error(transparent)]
    Store(#[from] logits_store::StoreError),
}

impl FormatError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a Parquet or Arrow error with the file it concerns.
    pub fn parquet(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        FormatError::Parquet {
            path: path.into(),
            message: err.to_string(),
        }
    }
}

/// Result alias used throughout the format library.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
