//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`): from the
//! search path the program sets with [`configure`] (the binaries: `ORT_DYLIB_PATH`, the cache
//! `scripts/fetch-ort.sh` fills, the `onnxruntime` Python package), else from the defaults of
//! [`candidates`], else a clear error that says how to get it. The version is written once, in `scripts/ort-version.txt`, in step with
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

static CONFIGURED: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// Sets where the library is looked for, in order, before the first model is opened (the
/// binaries call this with what the environment says; see [`search_path`]). Later calls are
/// ignored.
pub fn configure(paths: Vec<PathBuf>) {
    let _ = CONFIGURED.set(paths);
}

/// The search path from what a program was told: `dylib` (an explicit library file, used
/// alone), else `cache` (a cache root holding `ort/VERSION/libonnxruntime.so.VERSION`), the
/// repository's `.cache` found from the executable or the working directory, then
/// `python_package` (the directory of an importable `onnxruntime` package, whose
/// `capi/libonnxruntime.so*` is the library `pip install onnxruntime` brought).
pub fn search_path(
    dylib: Option<PathBuf>,
    cache: Option<PathBuf>,
    python_package: Option<PathBuf>,
) -> Vec<PathBuf> {
    if let Some(p) = dylib {
        return vec![p];
    }
    let mut out = repo_candidates(cache);
    if let Some(pkg) = python_package {
        let capi = pkg.join("capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // The versioned file names sort after the bare one; the longest name is the most
        // specific (libonnxruntime.so.1.x.y).
        libs.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        out.extend(libs);
    }
    out
}

/// Where the library is looked for, in order (the first existing one is used): the
/// configured search path, else `ORT_DYLIB_PATH`, `LOGITS_CACHE` and the repository's
/// `.cache` (for programs that embed the library without configuring it, and its tests).
pub fn candidates() -> Vec<PathBuf> {
    if let Some(c) = CONFIGURED.get() {
        return c.clone();
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    repo_candidates(std::env::var_os("LOGITS_CACHE").map(PathBuf::from))
}

/// `cache`'s library, then the repository's `.cache` from the executable or working directory.
fn repo_candidates(cache: Option<PathBuf>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let rel = Path::new("ort").join(ort_version()).join(library_name());
    if let Some(c) = cache {
        out.push(c.join(&rel));
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

/// The library file the process loaded (or would load), for messages.
pub fn library_in_use() -> Option<PathBuf> {
    candidates().into_iter().find(|p| p.is_file())
}

/// Where a teacher session runs: ONNX Runtime's CPU provider, or a GPU through the CUDA or
/// TensorRT provider. A GPU device that cannot be used is an error, never a silent fall back
/// to the CPU; only [`Device::Auto`] falls back, and says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// NVIDIA GPU `N` through the CUDA execution provider.
    Cuda(u32),
    /// NVIDIA GPU `N` through the TensorRT execution provider.
    TensorRt(u32),
    /// CUDA device 0 where it can be used, else the CPU (recorded in the manifest).
    Auto,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<u32>().map_err(|_| {
                    format!("device {s:?}: the part after ':' must be a GPU index such as 0")
                })?,
            ),
            None => (s, 0),
        };
        match (kind, s.contains(':')) {
            ("cpu", false) => Ok(Device::Cpu),
            ("auto", false) => Ok(Device::Auto),
            ("cuda", _) => Ok(Device::Cuda(index)),
            ("tensorrt", _) => Ok(Device::TensorRt(index)),
            _ => Err(format!(
                "unknown device {s:?}: use cpu, cuda[:N], tensorrt[:N], auto, or a comma-separated list such as cuda:0,cuda:1"
            )),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::TensorRt(i) => write!(f, "tensorrt:{i}"),
            Device::Auto => write!(f, "auto"),
        }
    }
}

impl Device {
    /// Parses `--device`: one device or a comma-separated list (one session per entry, taken
    /// in turn by the sessions).
    pub fn parse_list(s: &str) -> std::result::Result<Vec<Device>, String> {
        let list: Vec<Device> = s
            .split(',')
            .map(|d| d.trim().parse())
            .collect::<std::result::Result<_, _>>()?;
        if list.is_empty() {
            return Err("--device needs at least one device".into());
        }
        Ok(list)
    }

    /// ONNX Runtime's name of the execution provider this device runs on.
    pub fn provider(&self) -> &'static str {
        match self {
            Device::Cpu | Device::Auto => "CPUExecutionProvider",
            Device::Cuda(_) => "CUDAExecutionProvider",
            Device::TensorRt(_) => "TensorrtExecutionProvider",
        }
    }
}

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let tried = candidates();
        let Some(lib) = tried.iter().find(|p| p.is_file()) else {
            let shown: Vec<String> = tried.iter().take(4).map(|p| p.display().to_string()).collect();
            return Err(format!(
                "library {} not found (looked at {}); run scripts/fetch-ort.sh, pip install onnxruntime (version {2} or newer), or set ORT_DYLIB_PATH to a libonnxruntime.so of version {2} or newer",
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
    fn devices_parse_and_print() {
        use super::Device;
        assert_eq!(
            Device::parse_list("cuda:0, cuda:1").unwrap(),
            vec![Device::Cuda(0), Device::Cuda(1)]
        );
        assert_eq!(Device::parse_list("cpu").unwrap(), vec![Device::Cpu]);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!(
            "tensorrt:2".parse::<Device>().unwrap().to_string(),
            "tensorrt:2"
        );
        for bad in ["gpu", "cuda:x", "cpu:1", ""] {
            assert!(Device::parse_list(bad).is_err(), "{bad}");
        }
    }

    /// An explicit library is used alone; otherwise the Python package's versioned library
    /// comes after the caches.
    #[test]
    fn the_search_path_ends_with_the_python_packages_library() {
        let d = tempfile::tempdir().unwrap();
        let capi = d.path().join("onnxruntime").join("capi");
        std::fs::create_dir_all(&capi).unwrap();
        for f in [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
            "x.py",
        ] {
            std::fs::write(capi.join(f), b"").unwrap();
        }
        let p = super::search_path(
            None,
            Some(d.path().join("cache")),
            Some(d.path().join("onnxruntime")),
        );
        assert_eq!(
            p.last(),
            Some(&capi.join("libonnxruntime.so.1.31.1")),
            "{p:?}"
        );
        assert!(p[0].starts_with(d.path().join("cache")), "{p:?}");
        assert_eq!(
            p.iter().filter(|x| x.starts_with(&capi)).count(),
            1,
            "{p:?}"
        );
        let lib = d.path().join("lib.so");
        assert_eq!(super::search_path(Some(lib.clone()), None, None), vec![lib]);
    }
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
