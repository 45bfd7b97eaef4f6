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

/// Asks the CPU to start loading every cache line of `data` into its caches (nothing off
/// x86-64). A hint only: no result depends on it.
#[inline]
pub(crate) fn prefetch_lines<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        let (start, bytes) = (data.as_ptr() as *const i8, std::mem::size_of_val(data));
        for at in (0..bytes).step_by(LINE) {
            // SAFETY: a prefetch never faults and changes nothing a program can observe but
            // its timing (SSE, part of x86-64); the address lies within `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(at)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The page size transparent huge pages come in on x86-64 and most other Linux platforms.
const HUGE_PAGE: usize = 2 << 20;

/// A zeroed buffer of `len` bytes for weights the matmul kernels stream through on every
/// step, on memory asked to be transparent huge pages (`MADV_HUGEPAGE`) before anything
/// touches it, so the first writes fault it in as huge pages.
///
/// Why: a decode step reads every weight once, in order. On 4 KiB pages each page is a TLB
/// miss and a page walk, and the hardware prefetcher stops at every page boundary; Gemma 3's
/// 178 MB output head alone is 43,000 pages. Where THP is `madvise` (the common default),
/// weights in ordinary allocations never got huge pages. Measured on Zen 4, one thread, CPU
/// time of `examples/matmul_driver.rs` in alternating runs: the 262144 × 640 Q8_0 head at one
/// activation row 8.1-9.6 -> 5.4-5.6 ms, at 8 rows 15.1-17.3 -> 13.7-14.4 ms, at 32 rows
/// 41.5-42.6 -> 36.5-36.8 ms; Q5_0 65536 × 640 and Q4_K 65536 × 1024 at 32 rows 5% less.
///
/// Buffers of up to half a [`STREAMING_CHUNK`] are carved one after another out of shared
/// chunks aligned to huge pages: a small model's matrices (SmolLM2's are 76 KB to 1.2 MB)
/// hold no whole 2 MiB page of their own, so advising each buffer alone left them on 4 KiB
/// pages. Measured on Zen 4, one thread, one row, 400 distinct matrices cycled so each comes
/// from memory (`matmul_driver ... 1 30 400 400`), CPU time, own buffers vs shared chunks,
/// two alternated pairs: Q5_0 1536 × 576 27.6/31.8 -> 20.3/19.2 us, Q5_0 576 × 576
/// 10.3/8.2 -> 8.1/7.1 us, Q6_K 576 × 1536 49.3/45.1 -> 37.6/38.4 us.
///
/// Only a hint: where THP is `never`, unavailable or the allocator reuses touched memory, the
/// buffer is on ordinary pages, and no result depends on it.
pub(crate) fn zeroed_for_streaming(len: usize) -> StreamingBuffer {
    let (chunk, offset, shared_bytes) = carve(len);
    // SAFETY: `offset..offset + len` lies inside `chunk` (`carve`) and no live buffer holds
    // any of it.
    unsafe { std::ptr::write_bytes(chunk.start.as_ptr().add(offset), 0, len) };
    StreamingBuffer { chunk, offset, len, shared_bytes }
}

/// Bytes of each shared chunk [`zeroed_for_streaming`] carves buffers from: whole huge pages.
/// Larger buffers get a chunk of their own, so a chunk's unused tail (address space only,
/// never touched unless handed out) stays under half of it.
const STREAMING_CHUNK: usize = 8 * HUGE_PAGE;

/// Where each buffer in a chunk starts: on a cache line of its own.
const STREAMING_ALIGN: usize = 64;

/// A weight buffer from [`zeroed_for_streaming`]: `len` zero-initialised bytes of a chunk it
/// shares with other buffers (disjoint ranges); the chunk is freed with its last buffer.
pub(crate) struct StreamingBuffer {
    chunk: std::sync::Arc<Chunk>,
    offset: usize,
    len: usize,
    /// The bytes of the chunk this buffer holds (`len` rounded up), when the chunk is shared:
    /// they go back to [`ARENA`]'s free ranges when the buffer is dropped.
    shared_bytes: Option<usize>,
}

impl Drop for StreamingBuffer {
    fn drop(&mut self) {
        if let Some(size) = self.shared_bytes {
            let mut arena = ARENA.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let chunk = std::sync::Arc::downgrade(&self.chunk);
            release_range(&mut arena.free, FreeRange { chunk, offset: self.offset, size });
        }
    }
}

impl std::ops::Deref for StreamingBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the range is inside the chunk, initialised (zeroed at creation) and handed to
        // this buffer alone; the chunk lives as long as the buffer holds it.
        unsafe { std::slice::from_raw_parts(self.chunk.start.as_ptr().add(self.offset), self.len) }
    }
}

impl std::ops::DerefMut for StreamingBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference to the range, since
        // no other buffer covers any of it.
        unsafe { std::slice::from_raw_parts_mut(self.chunk.start.as_ptr().add(self.offset), self.len) }
    }
}

impl Clone for StreamingBuffer {
    fn clone(&self) -> Self {
        let mut copy = zeroed_for_streaming(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl std::fmt::Debug for StreamingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingBuffer").field("len", &self.len).finish_non_exhaustive()
    }
}

/// Memory aligned to a huge page, advised as huge pages before its first touch.
struct Chunk {
    start: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: a `Chunk` is plain memory; the buffers carved from it synchronise their own access
// (each owns a disjoint range, reached through `&` or `&mut` of the buffer).
unsafe impl Send for Chunk {}
// SAFETY: as above.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// `len` bytes (a multiple of [`HUGE_PAGE`], nonzero), untouched.
    fn new(len: usize) -> Self {
        let layout =
            std::alloc::Layout::from_size_align(len, HUGE_PAGE).expect("a weight buffer fits the address space");
        // SAFETY: `layout` has a nonzero size.
        let start = unsafe { std::alloc::alloc(layout) };
        let Some(start) = std::ptr::NonNull::new(start) else { std::alloc::handle_alloc_error(layout) };
        advise_huge_range(start.as_ptr() as usize, len);
        Chunk { start, layout }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with this layout; no buffer refers to it any more.
        unsafe { std::alloc::dealloc(self.start.as_ptr(), self.layout) }
    }
}

/// The shared chunks small buffers are carved from.
struct Arena {
    /// The chunk being filled (`Weak`: once every buffer of it has been dropped it is freed,
    /// not kept for the next model), and how many of its bytes have been handed out.
    current: std::sync::Weak<Chunk>,
    used: usize,
    /// Ranges of live chunks whose buffers were dropped, reused first: a model's loader frees
    /// each layer's unstacked parts (Q, K, V; gate, up) after stacking them, and the next
    /// layer's parts, the same sizes, take their places instead of growing the chunks.
    free: Vec<FreeRange>,
}

struct FreeRange {
    chunk: std::sync::Weak<Chunk>,
    offset: usize,
    size: usize,
}

static ARENA: std::sync::Mutex<Arena> =
    std::sync::Mutex::new(Arena { current: std::sync::Weak::new(), used: 0, free: Vec::new() });

/// A chunk and the offset in it of `len` bytes nobody else holds, and how many bytes of a
/// shared chunk they take (`None`: a chunk of their own).
fn carve(len: usize) -> (std::sync::Arc<Chunk>, usize, Option<usize>) {
    let size = len.next_multiple_of(STREAMING_ALIGN).max(STREAMING_ALIGN);
    if size > STREAMING_CHUNK / 2 {
        return (std::sync::Arc::new(Chunk::new(size.next_multiple_of(HUGE_PAGE))), 0, None);
    }
    // The state stays consistent at every point a panic could leave it (none is expected).
    let mut arena = ARENA.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((chunk, offset)) = reuse_free_range(&mut arena.free, size) {
        return (chunk, offset, Some(size));
    }
    if let Some(chunk) = arena.current.upgrade() {
        if arena.used + size <= STREAMING_CHUNK {
            let offset = arena.used;
            arena.used += size;
            return (chunk, offset, Some(size));
        }
    }
    let chunk = std::sync::Arc::new(Chunk::new(STREAMING_CHUNK));
    arena.current = std::sync::Arc::downgrade(&chunk);
    arena.used = size;
    (chunk, 0, Some(size))
}

/// Takes `size` bytes from the smallest free range of a live chunk that has them (the rest
/// of the range stays free); forgets the ranges of chunks already freed. Best fit, not first
/// fit: a stacked matrix taking the front of a larger part's range would leave a piece too
/// small for that part in the next layer, and the pieces would add up layer after layer.
fn reuse_free_range(free: &mut Vec<FreeRange>, size: usize) -> Option<(std::sync::Arc<Chunk>, usize)> {
    free.retain(|range| range.chunk.strong_count() > 0);
    let at = (0..free.len()).filter(|&i| free[i].size >= size).min_by_key(|&i| free[i].size)?;
    let chunk = free[at].chunk.upgrade()?;
    let offset = free[at].offset;
    if free[at].size == size {
        free.swap_remove(at);
    } else {
        free[at].offset += size;
        free[at].size -= size;
    }
    Some((chunk, offset))
}

/// Adds `range` to the free ranges, merged with the free ranges of its chunk it touches, so
/// the ranges of a layer's parts (Q, K and V side by side) become one range again.
fn release_range(free: &mut Vec<FreeRange>, mut range: FreeRange) {
    while let Some(at) = free.iter().position(|other| {
        other.chunk.ptr_eq(&range.chunk)
            && (other.offset + other.size == range.offset || range.offset + range.size == other.offset)
    }) {
        let neighbour = free.swap_remove(at);
        range.offset = range.offset.min(neighbour.offset);
        range.size += neighbour.size;
    }
    free.push(range);
}

/// `MADV_HUGEPAGE` over the whole 2 MiB pages inside `buffer` (nothing if it holds none).
#[cfg(target_os = "linux")]
pub(crate) fn advise_huge_pages<T>(buffer: &[T]) {
    let buffer = {
        // SAFETY: the same memory viewed as bytes; only its address range is used.
        unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), std::mem::size_of_val(buffer)) }
    };
    advise_huge_range(buffer.as_ptr() as usize, buffer.len());
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge_pages<T>(_buffer: &[T]) {}

/// `MADV_HUGEPAGE` over the whole 2 MiB pages inside the `len` bytes at address `start`,
/// which must belong to one allocation.
#[cfg(target_os = "linux")]
fn advise_huge_range(start: usize, len: usize) {
    let (first, end) = (start.next_multiple_of(HUGE_PAGE), (start + len) / HUGE_PAGE * HUGE_PAGE);
    if end > first {
        // SAFETY: the range lies inside the caller's allocation and is page-aligned;
        // MADV_HUGEPAGE changes how future faults are served, never the contents. An error
        // (no THP in this kernel) leaves the memory as it was, which is fine for a hint.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_range(_start: usize, _len: usize) {}

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

    /// Small weight buffers (SmolLM2's 76 KB attn_k, 228 KB attn_q, ...) lie in chunks aligned
    /// to huge pages and advised as such: on their own they hold no whole 2 MiB page and were
    /// left on 4 KiB pages. Each is zeroed, cache-line aligned and disjoint from the others.
    #[test]
    fn small_weight_buffers_are_carved_from_advised_huge_page_chunks() {
        let sizes = [76_032, 228_096, 1, 0, 608_256, 117_504];
        let mut buffers: Vec<StreamingBuffer> = sizes.iter().map(|&len| zeroed_for_streaming(len)).collect();
        for (i, buffer) in buffers.iter_mut().enumerate() {
            assert_eq!(buffer.len(), sizes[i]);
            assert!(buffer.iter().all(|&b| b == 0), "buffer {i} is zeroed");
            assert_eq!(buffer.as_ptr() as usize % STREAMING_ALIGN, 0, "buffer {i} starts on a cache line");
            assert_eq!(buffer.chunk.start.as_ptr() as usize % HUGE_PAGE, 0, "buffer {i}'s chunk is huge-page aligned");
            assert!(buffer.offset + buffer.len <= buffer.chunk.layout.size(), "buffer {i} lies inside its chunk");
            buffer.fill(i as u8 + 1);
        }
        for (i, buffer) in buffers.iter().enumerate() {
            assert!(buffer.iter().all(|&b| b == i as u8 + 1), "buffer {i} kept its bytes: the ranges are disjoint");
        }
        if !has_transparent_huge_pages() {
            eprintln!("no transparent huge pages in this kernel: the advice is not checked");
            return;
        }
        for (i, buffer) in buffers.iter().enumerate().filter(|(_, b)| !b.is_empty()) {
            let flags = vm_flags_at(buffer.as_ptr() as usize).expect("the buffer's mapping is in /proc/self/smaps");
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "buffer {i} ({} bytes): VmFlags {flags}",
                buffer.len()
            );
        }
    }

    /// The loader frees each layer's unstacked parts; their ranges are merged when adjacent and
    /// handed out again (best fit, the rest of a range kept); ranges of freed chunks are forgotten.
    #[test]
    fn freed_ranges_are_merged_reused_best_fit_and_dead_chunks_forgotten() {
        let chunk = std::sync::Arc::new(Chunk::new(HUGE_PAGE));
        let range = |offset, size| FreeRange { chunk: std::sync::Arc::downgrade(&chunk), offset, size };
        let dead = std::sync::Arc::downgrade(&std::sync::Arc::new(Chunk::new(HUGE_PAGE)));
        let mut free = vec![FreeRange { chunk: dead, offset: 0, size: 1 << 20 }, range(0, 256), range(1024, 4096)];
        let (from, offset) = reuse_free_range(&mut free, 512).expect("the 4096-byte range has room");
        assert!(std::sync::Arc::ptr_eq(&from, &chunk));
        assert_eq!(offset, 1024);
        assert_eq!(free.len(), 2, "the freed chunk's range is forgotten");
        assert!(free.iter().any(|r| (r.offset, r.size) == (1536, 3584)), "the rest of the range stays free");
        assert_eq!(reuse_free_range(&mut free, 256).map(|(_, offset)| offset), Some(0));
        assert!(reuse_free_range(&mut free, 4096).is_none(), "no range is that large any more");

        // Best fit: the 300-byte request takes the 320-byte range, not the first (1000 bytes).
        let mut free = vec![range(8192, 1000), range(4096, 320)];
        assert_eq!(reuse_free_range(&mut free, 300).map(|(_, offset)| offset), Some(4096));
        // Released ranges merge with the free ranges they touch in the same chunk.
        let mut free = vec![range(0, 64), range(128, 64)];
        release_range(&mut free, range(64, 64));
        assert_eq!(free.iter().map(|r| (r.offset, r.size)).collect::<Vec<_>>(), vec![(0, 192)]);
    }

    /// A buffer handed a range another buffer wrote and dropped still starts all zero.
    #[test]
    fn a_reused_range_is_zeroed_again() {
        let _keeps_the_chunk = zeroed_for_streaming(4096);
        let mut first = zeroed_for_streaming(70_000);
        first.fill(0xff);
        drop(first);
        let second = zeroed_for_streaming(70_000);
        assert!(second.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_cloned_weight_buffer_is_a_copy_of_its_own() {
        let mut original = zeroed_for_streaming(5000);
        original.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let copy = original.clone();
        assert_eq!(&copy[..], &original[..]);
        assert_ne!(copy.as_ptr(), original.as_ptr());
        original.fill(0);
        assert!(copy.iter().enumerate().all(|(i, &b)| b == i as u8), "the copy does not share the original's bytes");
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
