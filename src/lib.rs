//! # logits: the front doors
//!
//! The command-line programs in `src/bin/` are thin: they parse flags, call the library crates
//! and print. This library holds the little they share that belongs to neither side — running
//! an arbitrary ONNX file (the exported student, or the teacher for a latency comparison)
//! through ONNX Runtime. The teacher side owns the runtime set-up; the student side never
//! touches ONNX Runtime, so the check of an exported student lives here, where both meet.

pub mod onnx_run;

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
