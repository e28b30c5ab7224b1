//! # logits: the front doors
//!
//! The command-line programs in `src/bin/` are thin: they parse flags, call the library crates
//! and print. This library holds the little they share that belongs to neither side — running
//! an arbitrary ONNX file (the exported student, or the teacher for a latency comparison)
//! through ONNX Runtime. The teacher side owns the runtime set-up; the student side never
//! touches ONNX Runtime, so the check of an exported student lives here, where both meet.

pub mod onnx_run;

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
