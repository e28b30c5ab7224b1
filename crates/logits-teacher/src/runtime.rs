//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`): from
//! `ORT_DYLIB_PATH`, else from the cache `scripts/fetch-ort.sh` fills, else a clear error that
//! says how to get it. The version is written once, in `scripts/ort-version.txt`, in step with
//! the `api-NN` feature of `ort` in the workspace `Cargo.toml` (checked by a test).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Result, TeacherError};

/// The ONNX Runtime version the project fetches and targets.
pub const ORT_VERSION: &str = include_str!("../../../scripts/ort-version.txt");

/// The ONNX Runtime version without surrounding whitespace.
pub fn ort_version() -> &'static str {
    ORT_VERSION.trim()
}

/// Library file name of the pinned version.
pub fn library_name() -> String {
    format!("libonnxruntime.so.{}", ort_version())
}

/// Where the library is looked for, in order (the first existing one is used).
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
        return out;
    }
    let rel = Path::new("ort").join(ort_version()).join(library_name());
    if let Some(c) = std::env::var_os("LOGITS_CACHE") {
        out.push(PathBuf::from(c).join(&rel));
    }
    // The repository's .cache, found from the executable (target/<profile>/...) or the
    // working directory, whichever lies inside a checkout.
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for s in starts {
        for dir in s.ancestors() {
            let p = dir.join(".cache").join(&rel);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let tried = candidates();
        let Some(lib) = tried.iter().find(|p| p.is_file()) else {
            let shown: Vec<String> = tried.iter().take(4).map(|p| p.display().to_string()).collect();
            return Err(format!(
                "library {} not found (looked at {}); run scripts/fetch-ort.sh, or set ORT_DYLIB_PATH to a libonnxruntime.so of version {} or newer",
                library_name(),
                shown.join(", "),
                ort_version()
            ));
        };
        let builder = ort::init_from(lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        builder
            .with_name("logits")
            .build()
            .map_err(|e| format!("{}: {e}", lib.display()))
    });
    env.as_ref().map_err(|e| TeacherError::Runtime(e.clone()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_matches_the_ort_api_feature() {
        let manifest = include_str!("../../../Cargo.toml");
        let minor = super::ort_version().split('.').nth(1).unwrap_or("");
        assert!(
            manifest.contains(&format!("\"api-{minor}\"")),
            "scripts/ort-version.txt says {} but the workspace ort feature is not api-{minor}",
            super::ort_version()
        );
    }
}
