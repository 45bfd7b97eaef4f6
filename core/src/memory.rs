//! Handing memory the engine freed back to the operating system.
//!
//! glibc's malloc keeps freed blocks in its arenas for reuse, and once a large block is freed
//! it raises its mmap threshold, so the next engine's weights and KV cache come from arenas
//! too. In a long-lived process (a server, a notebook) a closed engine would then leave
//! ~100 MB per model resident although nothing uses it, and `close()` would not visibly free
//! anything. `malloc_trim(0)` returns the free pages of every arena. Elsewhere: nothing to do.

/// Returns the allocator's free pages to the OS; call after dropping large buffers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_free_memory() {
    // SAFETY: glibc's malloc_trim takes each arena's lock and only touches free chunks; any
    // thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the OS; call after dropping large buffers.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() {}

/// Total size of the files in `path` (a file, or a folder walked recursively); unreadable
/// entries count as 0. Model weights are loaded from these files, so this sizes a model.
pub(crate) fn files_bytes(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|entry| files_bytes(&entry.path())).sum()
}
