//! # logits: the front doors
//!
//! The command-line programs in `src/bin/` are thin: they parse flags, call the library crates
//! and print. This library holds the little they share that belongs to neither side — running
//! an arbitrary ONNX file (the exported student, or the teacher for a latency comparison)
//! through ONNX Runtime. The teacher side owns the runtime set-up; the student side never
//! touches ONNX Runtime, so the check of an exported student lives here, where both meet; and
//! the Hugging Face directory of a language-model student, which needs the tokenizer library.

pub mod hf_dir;
pub mod onnx_run;
pub mod student_eval;

/// What every binary does first, before any other thread exists: the default SIGPIPE
/// disposition (a closed pipe ends the program quietly), glibc keeping freed memory, and the
/// ONNX Runtime search path ([`configure_runtime`]).
pub fn prepare_process() {
    // SAFETY: setting a signal disposition before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    configure_runtime();
}

/// Tells the teacher runtime where ONNX Runtime's library is, from the environment (read
/// here, in the binaries' shared code, not in the libraries): `ORT_DYLIB_PATH` (a library file,
/// used alone), `LOGITS_CACHE`, the repository's `.cache` (scripts/fetch-ort.sh), and — only
/// when none of those holds it, so no Python starts otherwise — the library inside the
/// `onnxruntime` package of `$LOGITS_PYTHON` (default `python3`), as `pip install
/// onnxruntime` brings it. Called by each binary before anything opens a model.
pub fn configure_runtime() {
    use logits_teacher::runtime::{configure, search_path};
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from);
    let cache = std::env::var_os("LOGITS_CACHE").map(std::path::PathBuf::from);
    let found = search_path(dylib.clone(), cache.clone(), None)
        .iter()
        .any(|p| p.is_file());
    let package = if dylib.is_none() && !found {
        let py = std::env::var_os("LOGITS_PYTHON").unwrap_or_else(|| "python3".into());
        python_package_dir(&py, "onnxruntime")
    } else {
        None
    };
    configure(search_path(dylib, cache, package));
}

/// The directory of Python package `name` as `python` imports it, if it does.
fn python_package_dir(python: &std::ffi::OsStr, name: &str) -> Option<std::path::PathBuf> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            &format!("import os, {name}; print(os.path.dirname({name}.__file__))"),
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| std::path::PathBuf::from(dir))
}

/// Where input files given as URLs (a model, a corpus, a tokenizer) are downloaded to:
/// `$LOGITS_CACHE_DIR/objects`, or the system temporary directory.
pub fn fetched_dir() -> std::path::PathBuf {
    match std::env::var_os("LOGITS_CACHE_DIR").filter(|d| !d.is_empty()) {
        Some(d) => std::path::PathBuf::from(d).join("objects"),
        None => std::env::temp_dir().join("logits-objects"),
    }
}

/// A local path for an input given as a path or a URL (`s3://...`): URLs are downloaded once
/// into [`fetched_dir`].
pub fn local_input(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    Ok(logits_store::localize(path, &fetched_dir())?)
}

/// Tells glibc's allocator to keep freed memory for reuse instead of returning it to the
/// kernel. Training allocates the same large buffers (a batch's logits over the vocabulary,
/// tens of MB) every step; by default each is a fresh mmap/munmap, and with rayon threads
/// alive every munmap costs a TLB shootdown on all cores plus page faults on the next step —
/// measured at a fifth of a language-model step. No effect outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Runs `f` on a local directory standing for `out`. A plain path is used as it is. For a
/// store URL, `f` works in a staging directory (`LOGITS_STAGING_DIR` or the temporary
/// directory) holding a copy of what is already at the URL (so `--resume` continues a run kept
/// in a store), and every file it leaves is uploaded afterwards — also when `f` fails, so the
/// checkpoints of an interrupted run are not lost.
pub fn with_output_dir<T>(
    out: &std::path::Path,
    f: impl FnOnce(&std::path::Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use anyhow::Context;
    if !logits_store::path_is_url(out) {
        return f(out);
    }
    let url = out.display().to_string();
    let remote = logits_store::Remote::open(&url)?;
    let base = std::env::var_os("LOGITS_STAGING_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("logits-staging"));
    let local = base.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&local).with_context(|| local.display().to_string())?;
    for (rel, _) in remote.list("")? {
        let bytes = remote.get(&rel)?.unwrap_or_default();
        let p = local.join(&rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
        }
        std::fs::write(&p, &bytes).with_context(|| p.display().to_string())?;
    }
    let result = f(&local);
    let uploaded = upload_tree(&remote, &local, &local);
    let _ = std::fs::remove_dir_all(&local);
    let value = result?;
    uploaded.with_context(|| format!("uploading the run to {url}"))?;
    Ok(value)
}

fn upload_tree(
    remote: &logits_store::Remote,
    base: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            upload_tree(remote, base, &p)?;
        } else if let Ok(rel) = p.strip_prefix(base) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            remote.upload(&rel, &p)?;
        }
    }
    Ok(())
}

/// The fault points a test armed with `LOGITS_FAULT=POINT:N[,...]`. Read only in debug builds
/// (the binaries the test command runs): a release build ignores the variable, so nothing in
/// an installed tool's environment can make it fail on purpose.
pub fn faults_from_env() -> anyhow::Result<logits_format::fault::Faults> {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var("LOGITS_FAULT") {
        return logits_format::fault::Faults::parse(&spec).map_err(|e| anyhow::anyhow!(e));
    }
    Ok(logits_format::fault::Faults::none())
}

/// Set by SIGINT or SIGTERM once [`stop_on_signals`] is installed.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The signal number that asked to stop (0: none yet).
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // Only atomic stores: async-signal-safe. A second signal of the same kind ends the
    // process at once (the default action), for a user who does not want to wait.
    STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; restores the default disposition.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process, so a build or a
/// training run can finish what it holds, keep what is complete and say how to resume. The
/// returned flag is what the libraries poll. Call before starting threads.
pub fn stop_on_signals() -> &'static std::sync::atomic::AtomicBool {
    #[cfg(unix)]
    // SAFETY: installs a handler that only does atomic stores; before other threads start.
    unsafe {
        let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    &STOP
}

/// The name of the signal that stopped the run, for messages ("SIGINT", "SIGTERM").
pub fn stop_signal_name() -> &'static str {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a stop signal",
    }
}

/// Exit status of a run stopped by a signal: 128 + the signal number, as shells report it.
pub fn stop_exit_code() -> u8 {
    let sig = STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst);
    (128 + sig.clamp(1, 127)) as u8
}

/// An error in how a command was called (a flag out of range, flags that contradict each
/// other): the binaries exit with status 2 for it, as for the argument parser's own errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow` error (exit status 2 in the binaries).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// An error and its causes as one line, each cause said once: a cause whose text the message
/// already holds (library errors that name their cause, such as "path: No such file") is not
/// repeated, as `{:#}` would.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if t.is_empty() || out.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(20);
        let e = anyhow::Error::new(io).context(format!(
            "x/manifest.json: {}",
            std::io::Error::from_raw_os_error(20)
        ));
        let t = super::error_text(&e);
        assert_eq!(t.matches("Not a directory").count(), 1, "{t}");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_text(&e), "outer: inner");
    }
}
