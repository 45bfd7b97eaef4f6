//! Causal self-attention read straight from the paged f16 KV cache (no gather copies), with
//! grouped-query heads: the query heads that share a KV head are handled together, so each
//! cached K and V row is loaded and widened to f32 once for all of them.
//!
//! Work is split in tasks of (chunk, KV head, up to [`TOKENS_PER_TASK`] query tokens) spread
//! on the thread pool. **Batch invariance:** a (token, head) result is a pure function of its
//! query and its own sequence's cached positions `0..=pos`, computed in a fixed order (scores
//! in position order, softmax, then the weighted V sum in position order); how tokens are
//! grouped into tasks and what else is in the batch never changes the arithmetic.

use crate::kv_cache::KvStorage;
use crate::models::SeqChunk;
use crate::quant::disjoint::DisjointSlice;
use crate::threadpool::ThreadPool;

/// Query tokens one task handles, so a long prefill chunk spreads over the pool.
const TOKENS_PER_TASK: usize = 16;

/// Positions ahead of the one being scored whose K and V rows the SIMD kernel prefetches.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 8;

/// Largest head dimension the SIMD kernel handles (it widens one K row into a stack buffer).
#[cfg(target_arch = "x86_64")]
const MAX_SIMD_HEAD_DIM: usize = 256;

/// Head layout of the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Floats per row of the fused projection buffer, which starts with the query heads.
    pub qkv_row_len: usize,
    /// Scores are `q·k · scale` (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

/// Which cached positions a query at position `pos` attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// Every position `0..=pos` (global attention).
    Causal,
    /// The last `n` positions `pos + 1 - n ..= pos` (sliding-window attention; llama.cpp's
    /// standard SWA masks key `k` for query `q` when `q - k >= n`).
    Window(usize),
}

impl Span {
    /// The first position a query at `pos` attends to.
    fn first(self, pos: usize) -> usize {
        match self {
            Span::Causal => 0,
            Span::Window(n) => (pos + 1).saturating_sub(n),
        }
    }
}

impl Geometry {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Floats of the query heads at the start of each fused row.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Floats of the key heads (and of the value heads) that follow the queries.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Query tokens `tokens` (indices within chunk `chunk`) attending through KV head `kv_head`.
#[derive(Clone, Copy)]
struct Task {
    chunk: usize,
    /// The step row of the chunk's first token.
    chunk_first_row: usize,
    kv_head: usize,
    tokens: (usize, usize),
}

/// Per-step task list and score buffers, reused across steps (grow-only: warm steps do not
/// allocate).
#[derive(Default)]
pub(crate) struct AttentionScratch {
    tasks: Vec<Task>,
    /// Attention weights: `span` values per task (`group` heads × the longest attended span).
    scores: Vec<f32>,
    span: usize,
}

impl AttentionScratch {
    /// Splits this step's chunks into tasks and sizes the score buffer.
    pub fn plan(&mut self, chunks: &[SeqChunk<'_>], g: &Geometry) {
        self.tasks.clear();
        let mut first_row = 0;
        let mut max_positions = 0;
        for (chunk_index, chunk) in chunks.iter().enumerate() {
            let n_tokens = chunk.tokens.len();
            max_positions = max_positions.max(chunk.start_pos + n_tokens);
            for kv_head in 0..g.n_kv_heads {
                for first in (0..n_tokens).step_by(TOKENS_PER_TASK) {
                    self.tasks.push(Task {
                        chunk: chunk_index,
                        chunk_first_row: first_row,
                        kv_head,
                        tokens: (first, (first + TOKENS_PER_TASK).min(n_tokens)),
                    });
                }
            }
            first_row += n_tokens;
        }
        self.span = g.group() * max_positions;
        self.scores.resize(self.tasks.len() * self.span, 0.0);
    }
}

/// One KV head of one layer of one sequence's paged cache.
#[derive(Clone, Copy)]
struct KvHeadView<'a> {
    k: &'a [u16],
    v: &'a [u16],
    block_table: &'a [u32],
    /// The first position attended: positions before it are never read (a sliding window).
    first: usize,
    /// Offset of this layer's block 0, slot 0, at this KV head.
    base: usize,
    block_stride: usize,
    slot_stride: usize,
    block_size: usize,
}

impl<'a> KvHeadView<'a> {
    fn new(kv: &'a KvStorage, layer: usize, block_table: &'a [u32], kv_head: usize, head_dim: usize) -> Self {
        Self {
            k: kv.keys(layer),
            v: kv.values(layer),
            block_table,
            first: 0,
            base: kv.offset(layer, 0, kv_head, 0),
            block_stride: kv.block_size * kv.kv_dim,
            slot_stride: head_dim,
            block_size: kv.block_size,
        }
    }

    /// The same view starting at position `first`.
    fn starting_at(self, first: usize) -> Self {
        Self { first, ..self }
    }

    /// Offset of the row of the `i`-th attended position (`first + i`) in `k` and `v`.
    #[inline(always)]
    fn offset(&self, i: usize) -> usize {
        let p = self.first + i;
        self.base
            + self.block_table[p / self.block_size] as usize * self.block_stride
            + p % self.block_size * self.slot_stride
    }

    /// The blocks holding the `n` attended positions `first..first + n`.
    fn blocks(&self, n: usize) -> &'a [u32] {
        &self.block_table[self.first / self.block_size..(self.first + n).div_ceil(self.block_size)]
    }

    /// Calls `f(i, offset)` for the `n` attended positions `first + i`, `i` in `0..n` in
    /// order, walking the block table.
    #[inline(always)]
    fn for_each_position(&self, n: usize, mut f: impl FnMut(usize, usize)) {
        let end = self.first + n;
        let first_block = self.first / self.block_size;
        for (b, &block) in self.blocks(n).iter().enumerate() {
            let block_base = self.base + block as usize * self.block_stride;
            let block_start = (first_block + b) * self.block_size;
            let from = self.first.max(block_start);
            for p in from..end.min(block_start + self.block_size) {
                f(p - self.first, block_base + (p - block_start) * self.slot_stride);
            }
        }
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn best(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(8) && head_dim <= MAX_SIMD_HEAD_DIM && crate::cpu::has_avx2_fma_f16c() {
            return Kernel::Avx2;
        }
        let _ = head_dim;
        Kernel::Scalar
    }
}

/// Causal attention of every row of the step: for each token at position `pos` and each query
/// head, softmax(q·k · scale) over the sequence's positions in `span` (all of
/// `0..=pos`, or a sliding window ending at `pos`) applied to V.
/// Reads queries from `qkv` (rows of `qkv_row_len`) and writes `out` (rows of
/// `n_heads * head_dim`). K/V of this step's tokens must already be in `kv`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    scratch: &mut AttentionScratch,
    g: &Geometry,
    layer: usize,
    span: Span,
    chunks: &[SeqChunk<'_>],
    kv: &KvStorage,
    qkv: &[f32],
    out: &mut [f32],
    pool: &ThreadPool,
) {
    let hd = g.head_dim;
    let group = g.group();
    let q_dim = g.n_heads * hd;
    let scale = g.scale;
    let kernel = Kernel::best(hd);
    let score_span = scratch.span;
    let tasks = &scratch.tasks;
    let out = DisjointSlice::new(out);
    let scores = DisjointSlice::new(&mut scratch.scores);
    pool.run(tasks.len(), &|task_index| {
        let task = tasks[task_index];
        let chunk = &chunks[task.chunk];
        let view = KvHeadView::new(kv, layer, chunk.table(kv.pool_of(layer)), task.kv_head, hd);
        // SAFETY: each task owns its own `span`-long stretch of the score buffer.
        let scores = unsafe { scores.range_mut(task_index * score_span, score_span) };
        for t in task.tokens.0..task.tokens.1 {
            let row = task.chunk_first_row + t;
            let position = chunk.start_pos + t;
            let first = span.first(position);
            let view = view.starting_at(first);
            let n = position + 1 - first;
            let first_head = task.kv_head * group;
            let queries = &qkv[row * g.qkv_row_len + first_head * hd..][..group * hd];
            // SAFETY: the (row, head group) output slots belong to this task alone.
            let out = unsafe { out.range_mut(row * q_dim + first_head * hd, group * hd) };
            attend_token(kernel, &view, n, queries, hd, scale, &mut scores[..group * n], out);
        }
    });
}

/// One token's attention for one group of query heads (`queries` holds `group` heads of
/// `head_dim`, `out` the same shape) over positions `0..n`. `scores` holds `group * n`.
#[allow(clippy::too_many_arguments)]
fn attend_token(
    kernel: Kernel,
    view: &KvHeadView<'_>,
    n: usize,
    queries: &[f32],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    debug_assert_eq!(queries.len(), out.len());
    debug_assert_eq!(scores.len(), queries.len() / head_dim * n);
    match kernel {
        Kernel::Scalar => attend_token_scalar(view, n, queries, head_dim, scale, scores, out),
        // SAFETY: `Avx2` is chosen only when the CPU has AVX2, FMA and F16C and the head
        // dimension is a multiple of 8 no larger than MAX_SIMD_HEAD_DIM.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::attend_token(view, n, queries, head_dim, scale, scores, out) },
    }
}

fn attend_token_scalar(
    view: &KvHeadView<'_>,
    n: usize,
    queries: &[f32],
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    use crate::f16::f16_to_f32;
    let group = queries.len() / head_dim;
    view.for_each_position(n, |p, offset| {
        let key = &view.k[offset..offset + head_dim];
        for (h, query) in queries.chunks_exact(head_dim).enumerate() {
            let dot: f32 = query.iter().zip(key).map(|(&q, &k)| q * f16_to_f32(k)).sum();
            scores[h * n + p] = dot * scale;
        }
    });
    for head_scores in scores.chunks_exact_mut(n) {
        let max = head_scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0.0;
        for s in head_scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inverse = 1.0 / sum;
        head_scores.iter_mut().for_each(|s| *s *= inverse);
    }
    out.fill(0.0);
    view.for_each_position(n, |p, offset| {
        let value = &view.v[offset..offset + head_dim];
        for h in 0..group {
            let weight = scores[h * n + p];
            for (o, &v) in out[h * head_dim..][..head_dim].iter_mut().zip(value) {
                *o += weight * f16_to_f32(v);
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{KvHeadView, MAX_SIMD_HEAD_DIM, PREFETCH_AHEAD};
    use crate::models::elementwise::simd::exp_nonpositive;

    /// # Safety
    /// AVX2, FMA and F16C must be available; `head_dim` a multiple of 8, at most
    /// `MAX_SIMD_HEAD_DIM`; slice shapes as [`super::attend_token`] documents.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_token(
        view: &KvHeadView<'_>,
        n: usize,
        queries: &[f32],
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let group = queries.len() / head_dim;
        assert!(head_dim.is_multiple_of(8) && head_dim <= MAX_SIMD_HEAD_DIM && scores.len() == group * n);
        assert!(out.len() == queries.len());
        let (k, v) = (view.k, view.v);
        // Every offset the walk yields is a slot of a block in the table; the last slot's
        // `head_dim` values must lie inside both buffers.
        let last_slot = (view.block_size - 1) * view.slot_stride + head_dim;
        let blocks = view.blocks(n);
        assert!(k.len() == v.len());
        assert!(blocks.iter().all(|&b| view.base + b as usize * view.block_stride + last_slot <= k.len()));

        // Scores: widen each K row once, dot it with every query head of the group.
        let mut key = [0f32; MAX_SIMD_HEAD_DIM];
        view.for_each_position(n, |p, offset| {
            // Blocks are scattered in memory; the hardware prefetcher follows a block's run
            // but not the jump to the next block: ask for K and V rows ahead.
            if p + PREFETCH_AHEAD < n {
                let ahead = view.offset(p + PREFETCH_AHEAD);
                for line in (0..head_dim).step_by(32) {
                    _mm_prefetch::<_MM_HINT_T0>(k.as_ptr().add(ahead + line) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(ahead + line) as *const i8);
                }
            }
            let row = k.as_ptr().add(offset);
            for i in (0..head_dim).step_by(8) {
                let wide = _mm256_cvtph_ps(_mm_loadu_si128(row.add(i) as *const __m128i));
                _mm256_storeu_ps(key.as_mut_ptr().add(i), wide);
            }
            for h in 0..group {
                let q = queries.as_ptr().add(h * head_dim);
                // Four independent sums over 8-dim slices (a head_dim tail past the last
                // 32 goes to the first): one chain of dependent FMAs would wait on latency.
                let product = |i: usize, acc| {
                    _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(key.as_ptr().add(i)), acc)
                };
                let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                while i + 32 <= head_dim {
                    (a0, a1, a2, a3) = (product(i, a0), product(i + 8, a1), product(i + 16, a2), product(i + 24, a3));
                    i += 32;
                }
                while i < head_dim {
                    a0 = product(i, a0);
                    i += 8;
                }
                let sum = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
                *scores.get_unchecked_mut(h * n + p) = horizontal_sum(sum) * scale;
            }
        });
        for head_scores in scores.chunks_exact_mut(n) {
            softmax(head_scores);
        }

        // Weighted sum of V, position by position, into every head of the group: 32 dims
        // of up to 3 heads at a time stay in registers while the positions stream by.
        out.fill(0.0);
        for first_dim in (0..head_dim).step_by(32) {
            for first_head in (0..group).step_by(3) {
                let heads = (group - first_head).min(3);
                let tile = ValueTile { view, n, scores, head_dim, first_dim, first_head };
                match (head_dim - first_dim >= 32, heads) {
                    (true, 3) => tile.accumulate::<3>(out),
                    (true, 2) => tile.accumulate::<2>(out),
                    (true, _) => tile.accumulate::<1>(out),
                    (false, _) => tile.accumulate_narrow(out, heads),
                }
            }
        }
    }

    /// 32 dimensions (or what is left of the head) of up to 3 heads of the V sum.
    struct ValueTile<'a, 'b> {
        view: &'a KvHeadView<'b>,
        n: usize,
        scores: &'a [f32],
        head_dim: usize,
        first_dim: usize,
        first_head: usize,
    }

    impl ValueTile<'_, '_> {
        /// `HEADS` heads × 32 dims of accumulators in registers; each V row widened once.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn accumulate<const HEADS: usize>(&self, out: &mut [f32]) {
            let mut acc = [[_mm256_setzero_ps(); 4]; HEADS];
            let v = self.view.v.as_ptr().add(self.first_dim);
            let weights = self.scores.as_ptr().add(self.first_head * self.n);
            self.view.for_each_position(self.n, |p, offset| {
                let row = v.add(offset);
                let mut value = [_mm256_setzero_ps(); 4];
                for (j, x) in value.iter_mut().enumerate() {
                    *x = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * j) as *const __m128i));
                }
                for (h, acc) in acc.iter_mut().enumerate() {
                    let weight = _mm256_set1_ps(*weights.add(h * self.n + p));
                    for (a, &x) in acc.iter_mut().zip(&value) {
                        *a = _mm256_fmadd_ps(weight, x, *a);
                    }
                }
            });
            for (h, acc) in acc.iter().enumerate() {
                let dst = out.as_mut_ptr().add((self.first_head + h) * self.head_dim + self.first_dim);
                for (j, &a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(dst.add(8 * j), a);
                }
            }
        }

        /// The same sums (same order, same rounding) for a tail of fewer than 32 dims,
        /// accumulating in `out`, which is zero on entry.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn accumulate_narrow(&self, out: &mut [f32], heads: usize) {
            let o = out.as_mut_ptr();
            let v = self.view.v.as_ptr();
            self.view.for_each_position(self.n, |p, offset| {
                let row = v.add(offset);
                for i in (self.first_dim..self.head_dim).step_by(8) {
                    let value = _mm256_cvtph_ps(_mm_loadu_si128(row.add(i) as *const __m128i));
                    for h in self.first_head..self.first_head + heads {
                        let weight = _mm256_set1_ps(*self.scores.get_unchecked(h * self.n + p));
                        let dst = o.add(h * self.head_dim + i);
                        _mm256_storeu_ps(dst, _mm256_fmadd_ps(weight, value, _mm256_loadu_ps(dst)));
                    }
                }
            });
        }
    }

    /// Lanes summed in a fixed order.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn horizontal_sum(x: __m256) -> f32 {
        let pairs = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let halves = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
        _mm_cvtss_f32(_mm_add_ss(halves, _mm_shuffle_ps::<1>(halves, halves)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn horizontal_max(x: __m256) -> f32 {
        let pairs = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let halves = _mm_max_ps(pairs, _mm_movehl_ps(pairs, pairs));
        _mm_cvtss_f32(_mm_max_ss(halves, _mm_shuffle_ps::<1>(halves, halves)))
    }

    /// In-place softmax, 8 lanes at a time; the tail goes through the same vector code with
    /// its unused lanes masked out of the sum.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn softmax(x: &mut [f32]) {
        let n = x.len();
        let full = n / 8 * 8;
        let rest = n - full;
        let p = x.as_mut_ptr();
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..rest].copy_from_slice(&x[full..]);

        let mut max8 = _mm256_loadu_ps(tail.as_ptr());
        for i in (0..full).step_by(8) {
            max8 = _mm256_max_ps(max8, _mm256_loadu_ps(p.add(i)));
        }
        let max = _mm256_set1_ps(horizontal_max(max8));

        let mut sum8 = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), max));
            _mm256_storeu_ps(p.add(i), e);
            sum8 = _mm256_add_ps(sum8, e);
        }
        let in_tail = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(rest as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ));
        let e = _mm256_and_ps(exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), max)), in_tail);
        _mm256_storeu_ps(tail.as_mut_ptr(), e);
        sum8 = _mm256_add_ps(sum8, e);

        let inverse = _mm256_set1_ps(1.0 / horizontal_sum(sum8));
        for i in (0..full).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inverse));
        }
        _mm256_storeu_ps(tail.as_mut_ptr(), _mm256_mul_ps(e, inverse));
        x[full..].copy_from_slice(&tail[..rest]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f16::f32_to_f16;

    /// A small storage with a scattered block table, filled with pseudo-random K/V.
    fn storage(n: usize, head_dim: usize, n_kv_heads: usize, seed: u32) -> (KvStorage, Vec<u32>) {
        let block_size = 4;
        let blocks = n.div_ceil(block_size);
        let mut kv = KvStorage::new(2, blocks * 3, block_size, n_kv_heads, head_dim);
        let mut state = seed;
        let mut random = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        };
        for x in kv.all_values_mut() {
            *x = f32_to_f16(random());
        }
        // Blocks out of order and spread, like a real allocator's.
        let table = (0..blocks as u32).map(|b| (b * 7 + 2) % (blocks as u32 * 3)).collect();
        (kv, table)
    }

    /// Straightforward float64 attention for one query head over positions `0..n`.
    fn reference(kv: &KvStorage, table: &[u32], layer: usize, kv_head: usize, q: &[f32], n: usize) -> Vec<f64> {
        reference_over(kv, table, layer, kv_head, q, 0..n)
    }

    /// Straightforward float64 attention for one query head over `positions`.
    fn reference_over(
        kv: &KvStorage,
        table: &[u32],
        layer: usize,
        kv_head: usize,
        q: &[f32],
        positions: std::ops::Range<usize>,
    ) -> Vec<f64> {
        let hd = q.len();
        let at = |p: usize| kv.position_offset(layer, table, p, kv_head);
        let wide = |x: u16| crate::f16::f16_to_f32(x) as f64;
        let scores: Vec<f64> = positions
            .clone()
            .map(|p| {
                q.iter().zip(&kv.keys(layer)[at(p)..][..hd]).map(|(&a, &b)| a as f64 * wide(b)).sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = e.iter().sum();
        (0..hd)
            .map(|d| positions.clone().zip(&e).map(|(p, e)| e / total * wide(kv.values(layer)[at(p) + d])).sum())
            .collect()
    }

    #[test]
    fn sliding_window_reads_only_the_last_positions() {
        assert_eq!(Span::Window(8).first(3), 0);
        assert_eq!(Span::Window(8).first(7), 0);
        assert_eq!(Span::Window(8).first(8), 1);
        assert_eq!(Span::Causal.first(100), 0);
        let mut kernels = vec![Kernel::Scalar];
        if Kernel::best(16) != Kernel::Scalar {
            kernels.push(Kernel::best(16));
        }
        let (head_dim, group, window) = (16, 2, 6);
        for end in [1, 5, 6, 7, 9, 13, 22] {
            let (kv, table) = storage(end, head_dim, 2, end as u32);
            let queries: Vec<f32> = (0..group * head_dim).map(|i| ((i * 29 % 13) as f32 - 6.0) / 3.0).collect();
            let first = Span::Window(window).first(end - 1);
            let view = KvHeadView::new(&kv, 0, &table, 1, head_dim).starting_at(first);
            let n = end - first;
            for &kernel in &kernels {
                let mut scores = vec![0.0; group * n];
                let mut out = vec![0.0; group * head_dim];
                attend_token(kernel, &view, n, &queries, head_dim, 0.25, &mut scores, &mut out);
                for h in 0..group {
                    let expected = reference_over(&kv, &table, 0, 1, &queries[h * head_dim..][..head_dim], first..end);
                    for (&got, &want) in out[h * head_dim..][..head_dim].iter().zip(&expected) {
                        assert!((got as f64 - want).abs() < 1e-4, "{kernel:?} end {end} head {h}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_match_a_float64_reference() {
        let mut kernels = vec![Kernel::Scalar];
        if Kernel::best(64) != Kernel::Scalar {
            kernels.push(Kernel::best(64));
        }
        for (head_dim, group) in [(64, 3), (8, 1), (16, 2), (32, 2), (40, 4)] {
            for n in [1, 3, 8, 9, 17, 40] {
                let (kv, table) = storage(n, head_dim, 2, n as u32 + head_dim as u32);
                let queries: Vec<f32> = (0..group * head_dim).map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0).collect();
                let (layer, kv_head) = (1, 1);
                let view = KvHeadView::new(&kv, layer, &table, kv_head, head_dim);
                for &kernel in &kernels {
                    let mut scores = vec![0.0; group * n];
                    let mut out = vec![0.0; group * head_dim];
                    let scale = 1.0 / (head_dim as f32).sqrt();
                    attend_token(kernel, &view, n, &queries, head_dim, scale, &mut scores, &mut out);
                    for h in 0..group {
                        let q = &queries[h * head_dim..][..head_dim];
                        let expected = reference(&kv, &table, layer, kv_head, q, n);
                        for (d, (&got, &want)) in out[h * head_dim..][..head_dim].iter().zip(&expected).enumerate() {
                            assert!(
                                (got as f64 - want).abs() < 1e-4,
                                "{kernel:?} hd {head_dim} n {n} head {h} dim {d}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
