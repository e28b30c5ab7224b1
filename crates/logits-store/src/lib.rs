//! Where datasets and corpora live: a plain local path, or an object-store URL (`s3://`,
//! `gs://`, `az://`, `file://`) reached through the `object_store` crate.
//!
//! This is the only room of the workspace that talks to object storage. It knows nothing of
//! the dataset format: it moves bytes (whole objects, byte ranges, uploads) and offers the two
//! primitives the format's commit protocol needs on a store without renames — "create only if
//! absent" for small objects and "copy only if the target is absent" for shards. Everything is
//! blocking: one small tokio runtime, owned here, drives `object_store` for the build's and the
//! trainer's ordinary threads.
//!
//! Credentials come the standard way of each cloud (environment variables such as
//! `AWS_ACCESS_KEY_ID`, instance metadata, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...). `AWS_ENDPOINT_URL` points `s3://` at an S3-compatible
//! store (MinIO, Ceph, moto), with `AWS_ALLOW_HTTP=true` for a plain-HTTP one.
//!
//! Dependencies: `object_store` (one client for every store, conditional writes, multipart),
//! `tokio` (its runtime), `futures` (its list streams), `bytes` (its buffers, shared with
//! `parquet`), `parquet` (the `ChunkReader` trait, so a Parquet reader reads an object in place),
//! `url` (parsing locations), `sha2` (cache keys).

mod cache;
mod file;
mod remote;

use std::path::{Path, PathBuf};

pub use bytes::Bytes;
pub use cache::{CacheStats, RangeCache};
pub use file::{Pending, RemoteFile};
pub use remote::Remote;

/// An error reaching a location, with the URL or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A location that cannot be used (unknown scheme, malformed URL, bad store settings).
    #[error("{url}: {message}")]
    Location {
        /// The location as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The store refused or failed a request.
    #[error("{url}: {}{}", distinct_chain(error), credentials_hint(error))]
    Store {
        /// The object or prefix the request was for.
        url: String,
        /// The store's error. Not exposed as the error's source: its own text already repeats
        /// its causes, so the message is built once here, each cause said once.
        error: object_store::Error,
    },
    /// An object that should be there is not.
    #[error("{url}: not found")]
    NotFound {
        /// The object.
        url: String,
    },
    /// A local file (cache, staging, upload source) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The local file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
}

/// An error and its causes joined by ": ", leaving out a cause whose text is already there
/// (object_store's errors repeat their causes in their own text, several levels deep).
pub fn distinct_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What to do when a request failed because no credentials were configured: the AWS client
/// then asks the instance metadata service (169.254.169.254), whose failure alone does not
/// say that credentials were missing.
fn credentials_hint(e: &object_store::Error) -> &'static str {
    if distinct_chain(e).contains("169.254.169.254") {
        "\n(no AWS credentials were found in the environment, so the instance metadata service was asked: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE or a web identity, or run where instance credentials exist)"
    } else {
        ""
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Where something lives: a local path (used as it always was) or a location in a store.
#[derive(Debug, Clone)]
pub enum Location {
    /// A path on this machine.
    Local(PathBuf),
    /// A prefix in an object store.
    Remote(Remote),
}

/// True when `s` looks like a URL (`scheme://...`) rather than a path.
pub fn is_url(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// True when `path` is really a URL that a command received as a path argument.
pub fn path_is_url(path: &Path) -> bool {
    path.to_str().is_some_and(is_url)
}

impl Location {
    /// Parses a path or URL as given on a command line.
    pub fn parse(s: &str) -> Result<Location> {
        if is_url(s) {
            Ok(Location::Remote(Remote::open(s)?))
        } else {
            Ok(Location::Local(PathBuf::from(s)))
        }
    }

    /// Parses a command-line path argument, which may hold a URL.
    pub fn from_path(path: &Path) -> Result<Location> {
        match path.to_str() {
            Some(s) if is_url(s) => Location::parse(s),
            _ => Ok(Location::Local(path.to_path_buf())),
        }
    }

    /// The location as a user would write it.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Remote(r) => r.url().to_string(),
        }
    }
}

/// Makes a remote file available as a local path: a local path is returned as it is; a URL is
/// downloaded once into `dir` (named by a hash of the URL, its size and its entity tag, so a
/// changed object is fetched again) and the local copy's path returned. For corpora and
/// tokenizers, which their readers want as files.
pub fn localize(path: &Path, dir: &Path) -> Result<PathBuf> {
    let Some(s) = path.to_str().filter(|s| is_url(s)) else {
        return Ok(path.to_path_buf());
    };
    let (parent, name) = match s.rsplit_once('/') {
        Some((p, n)) if !n.is_empty() && !p.ends_with(':') && !p.ends_with("//") => (p, n),
        _ => {
            return Err(StoreError::Location {
                url: s.into(),
                message: "expected the URL of a file (…/name), not of a bucket".into(),
            });
        }
    };
    let remote = Remote::open(parent)?;
    remote.download_cached(name, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_instance_metadata_request_says_that_credentials_are_missing() {
        let imds = StoreError::Store {
            url: "s3://b/ds/manifest.json".into(),
            error: object_store::Error::Generic {
                store: "S3",
                source: "Error performing PUT http://169.254.169.254/latest/api/token".into(),
            },
        };
        let text = imds.to_string();
        assert!(
            text.starts_with("s3://b/ds/manifest.json: ") && text.contains("AWS_ACCESS_KEY_ID"),
            "{text}"
        );
        let other = StoreError::Store {
            url: "s3://b/x".into(),
            error: object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            },
        };
        assert!(!other.to_string().contains("credentials"), "{other}");
    }
}
