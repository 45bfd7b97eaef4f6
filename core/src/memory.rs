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

/// The page size transparent huge pages come in on x86-64 and most other Linux platforms.
const HUGE_PAGE: usize = 2 << 20;

/// A zeroed buffer of `len` bytes for weights the matmul kernels stream through on every
/// step, whose whole 2 MiB pages are asked to be transparent huge pages (`MADV_HUGEPAGE`)
/// before anything touches them, so the first writes fault them in as huge pages.
///
/// Why: a decode step reads every weight once, in order. On 4 KiB pages each page is a TLB
/// miss and a page walk, and the hardware prefetcher stops at every page boundary; Gemma 3's
/// 178 MB output head alone is 43,000 pages. Where THP is `madvise` (the common default),
/// weights in ordinary allocations never got huge pages. Measured on Zen 4, one thread, CPU
/// time of `examples/matmul_driver.rs` in alternating runs: the 262144 × 640 Q8_0 head at one
/// activation row 8.1-9.6 -> 5.4-5.6 ms, at 8 rows 15.1-17.3 -> 13.7-14.4 ms, at 32 rows
/// 41.5-42.6 -> 36.5-36.8 ms; Q5_0 65536 × 640 and Q4_K 65536 × 1024 at 32 rows 5% less.
/// Only a hint: where THP is `never`, unavailable or the allocation reuses touched memory,
/// the buffer is an ordinary one, and no result depends on it.
pub(crate) fn zeroed_for_streaming(len: usize) -> Vec<u8> {
    let buffer = vec![0u8; len];
    advise_huge_pages(&buffer);
    buffer
}

/// `MADV_HUGEPAGE` over the whole 2 MiB pages inside `buffer` (nothing if it holds none).
#[cfg(target_os = "linux")]
pub(crate) fn advise_huge_pages<T>(buffer: &[T]) {
    let buffer = {
        // SAFETY: the same memory viewed as bytes; only its address range is used.
        unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), std::mem::size_of_val(buffer)) }
    };
    let start = (buffer.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
    let end = (buffer.as_ptr() as usize + buffer.len()) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: the range lies inside `buffer`'s allocation and is page-aligned;
        // MADV_HUGEPAGE changes how future faults are served, never the contents. An error
        // (no THP in this kernel) leaves the memory as it was, which is fine for a hint.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge_pages<T>(_buffer: &[T]) {}

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

#[cfg(all(test, target_os = "linux"))]
pub(crate) mod tests {
    use super::*;

    /// Whether this kernel has transparent huge pages (else advice is a no-op to check).
    pub(crate) fn has_transparent_huge_pages() -> bool {
        std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists()
    }

    /// Bytes of `buffer`'s pages that are resident (`mincore`), whole 4 KiB pages counted.
    pub(crate) fn resident_bytes<T>(buffer: &[T]) -> usize {
        const PAGE: usize = 4096;
        let start = buffer.as_ptr() as usize / PAGE * PAGE;
        let end = (buffer.as_ptr() as usize + std::mem::size_of_val(buffer)).next_multiple_of(PAGE);
        let mut flags = vec![0u8; (end - start) / PAGE];
        // SAFETY: the range covers `buffer`'s mapped pages (page-aligned outward, still inside
        // its mapping or the allocator's) and `flags` has one byte per page.
        let status = unsafe { libc::mincore(start as *mut libc::c_void, end - start, flags.as_mut_ptr()) };
        assert_eq!(status, 0, "mincore");
        flags.iter().filter(|&&f| f & 1 == 1).count() * PAGE
    }

    /// The `VmFlags` line of the mapping in `/proc/self/smaps` that holds `address`.
    pub(crate) fn vm_flags_at(address: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (usize::from_str_radix(from, 16), usize::from_str_radix(to, 16)) {
                        inside = (from..to).contains(&address);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn streamed_weights_are_advised_as_huge_pages() {
        if !has_transparent_huge_pages() {
            eprintln!("no transparent huge pages in this kernel: nothing to check");
            return;
        }
        let buffer = zeroed_for_streaming(3 * HUGE_PAGE);
        let inner = (buffer.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
        let flags = vm_flags_at(inner).expect("the buffer's mapping is in /proc/self/smaps");
        // `hg`: MADV_HUGEPAGE was applied to this range.
        assert!(flags.split_whitespace().any(|f| f == "hg"), "VmFlags: {flags}");
        // A mapping without the advice has no `hg` (the check can fail). A fresh mapping, not a
        // `Vec`: the allocator may hand back heap memory an earlier test advised, which keeps
        // its `hg` flag after being freed.
        let len = 3 * HUGE_PAGE;
        // SAFETY: a new private anonymous mapping, unmapped below; nothing else refers to it.
        let plain = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(plain, libc::MAP_FAILED, "mmap");
        let plain_inner = (plain as usize).next_multiple_of(HUGE_PAGE);
        let plain_flags = vm_flags_at(plain_inner).expect("mapped");
        // SAFETY: `plain` is the mapping of `len` bytes made above.
        unsafe { libc::munmap(plain, len) };
        assert!(!plain_flags.split_whitespace().any(|f| f == "hg"), "VmFlags: {plain_flags}");
    }
}
