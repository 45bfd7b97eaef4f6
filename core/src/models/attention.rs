//! Causal self-attention read straight from the paged f16 KV cache (no gather copies), with
//! grouped-query heads, computed flash-style: positions go by in tiles of [`TILE`], each tile's
//! K and V rows are widened to f32 once (or, for a decode row, read in place: see **Memory**)
//! and used by every query row of a task (up to
//! [`TOKENS_PER_TASK`] tokens × the query heads sharing the KV head), and each query row keeps
//! a running maximum, running sums and a rescaled output accumulator (online softmax), so no
//! score buffer grows with the context.
//!
//! **The arithmetic of one query row** (one token at position `pos`, one query head), which
//! every kernel (portable, AVX2, AVX-512) performs identically, operation for operation, so
//! their results are the same bits:
//! - The attended positions `first..=pos` ([`Span`]) are cut at multiples of [`TILE`] in
//!   absolute position; tiles are visited in order. Within a tile, lane `j` is position
//!   `tile_start + j`; lanes outside `first..=pos` are masked.
//! - Score of a position: `dot(q, k) · scale`, where `dot` keeps 32 partial sums (partial `i`
//!   is the fused multiply-add chain over the dimensions `d ≡ i (mod 32)` in increasing order,
//!   from 0), summed as a fixed tree: `i + (i+16)`, then `+8`, `+4`, `+2`, `+1` lanes. (The
//!   AVX-512 kernel runs the last four levels for a tile's sixteen positions at once through a
//!   shuffle network: the same additions, no horizontal sum per score.)
//! - Per tile: `m' = maxps(t, m)` with `t` the tile's maximum as a fixed tree of `maxps`
//!   (lanes `maxps(s_j, s_(j+8))`, then `+4`, `+2`, `+1`; masked lanes hold -inf;
//!   `maxps(a, b)` is `a` if `a > b`, else `b`, as the instruction), `c = e^(m - m')`, weights
//!   `p_j = e^(s_j - m')` (0 for masked lanes), lane sums `l_j = fma(l_j, c, p_j)`, output
//!   accumulator `acc = acc · c`, then `acc = fma(p_j, v_j, acc)` for the unmasked lanes in
//!   order (masked lanes are skipped, never multiplied by 0: their V rows may hold anything).
//!   `e^x` is [`crate::models::elementwise`]'s polynomial, the same bits on every path.
//! - At the end: `l = tree(l_0..l_15)` (lanes `j + (j+8)`, then `+4`, `+2`, `+1`) and
//!   `out = acc · (1 / l)`.
//! - Contexts longer than [`attention_split::SLICE`] positions: the above runs per fixed slice of positions
//!   and the slices' partials are folded in order ([`crate::models::attention_split`]), the
//!   same bits whether the slices run in one task or, for a long decode row on an idle pool,
//!   in one task each.
//! - With a q8_0 cache: the score is `dot_q8(q8(q), k) · scale` (the query quantized in blocks
//!   of 32 like the matmuls' activations; per block, eight integer sums of four products, each
//!   added to its lane by a fused multiply-add with the product of the two scales); V rows are
//!   `q · d`, exact in f32. Every task quantizes its own query rows, so a row's slice tasks
//!   use the same query bits as an unspread pass.
//!
//! **Memory:** a tile's K/V rows are widened a block's run at a time (a block's slots lie one
//! after the other), and the next tile's rows are prefetched while this one is computed: the
//! paged blocks lie anywhere, so the hardware prefetcher cannot follow them. A task of one
//! token (a decode row) on a SIMD kernel skips the widening when the tile's rows lie in one
//! block (always, with the default block of 16 positions): the score and accumulate kernels
//! load each f16 K or V row, convert it in registers and use it for every query head of the
//! pass (up to three on AVX2, [`ROWS_PER_PASS`] on AVX-512: all of SmolLM2's three and Gemma
//! 3's four), so no scratch copy is written and read back. None of this changes a bit: f16 to f32 is exact,
//! and the kernels do the same operations on the same floats either way.
//!
//! **Batch invariance:** that arithmetic depends only on the row's query, its position, its
//! span and its sequence's cached K/V: tiles are aligned to absolute positions, not to the
//! chunk or the task, so which tokens share a task, how a prompt is chunked and what else is in
//! the batch never change a result.

use crate::f16::f16_to_f32;
use crate::kv_cache::{KvCacheType, KvStorage, RowsView, Q8_GROUP};
use crate::memory::prefetch_lines;
use crate::models::attention_split::{self, fold, Merged};
use crate::models::SeqChunk;
use crate::quant::disjoint::DisjointSlice;
use crate::quant::{Q8Block, ACTIVATION_BLOCK};
use crate::threadpool::ThreadPool;

/// Query tokens one task handles, so a long prefill chunk spreads over the pool; every K/V tile
/// a task widens serves all of them.
const TOKENS_PER_TASK: usize = 16;

/// Positions per K/V tile (and lanes of the running sums): one AVX-512 vector of scores.
const TILE: usize = 16;

/// Query heads whose output accumulators (or score sums) one kernel pass keeps in registers.
const ROWS_PER_PASS: usize = 4;

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
    /// Where this task's working buffers start in [`AttentionScratch::buffers`].
    buffer: usize,
    /// Where its 8-bit query and key blocks start in [`AttentionScratch::blocks`] (used with
    /// a q8_0 cache only).
    blocks: usize,
    /// `Some(slice)`: the task attends only the positions of this [`attention_split::SLICE`] and leaves its
    /// partial in its buffers for a [`Merge`]; `None`: it attends every position and writes
    /// the output.
    slice: Option<(usize, usize)>,
}

/// One decode row's KV head whose slices ran as separate tasks: folds their partials in order
/// (into the first slice task's buffers) and writes the output.
#[derive(Clone, Copy)]
struct Merge {
    /// The step row of the decoded token.
    row: usize,
    kv_head: usize,
    /// The slice tasks, in slice order.
    tasks: (usize, usize),
}

/// Per-step task list and working buffers, reused across steps (grow-only: warm steps do not
/// allocate).
#[derive(Default)]
pub(crate) struct AttentionScratch {
    tasks: Vec<Task>,
    merges: Vec<Merge>,
    /// Every task's [`TaskBuffers`], one after the other.
    buffers: Vec<f32>,
    /// Every task's 8-bit blocks (its quantized query rows, then one tile of keys), sized only
    /// when the cache is q8_0.
    blocks: Vec<Q8Block>,
    /// Blocks the planned tasks need with a q8_0 cache.
    blocks_needed: usize,
}

impl AttentionScratch {
    /// Splits this step's chunks into tasks and sizes their buffers. With `spread`, each decode
    /// row (a one-token chunk) whose span covers several slices gets one task per slice and a
    /// [`Merge`]; the results are the same bits either way.
    fn plan(&mut self, chunks: &[SeqChunk<'_>], g: &Geometry, span: Span, spread: bool) {
        self.tasks.clear();
        self.merges.clear();
        let mut first_row = 0;
        let mut buffer = 0;
        let mut blocks = 0;
        let group_floats = |tokens: usize| TaskBuffers::floats(tokens * g.group(), g.head_dim);
        let group_blocks = |tokens: usize| TaskBuffers::blocks(tokens * g.group(), g.head_dim);
        for (chunk_index, chunk) in chunks.iter().enumerate() {
            let n_tokens = chunk.tokens.len();
            let pos = chunk.start_pos;
            let spread_this =
                spread && n_tokens == 1 && attention_split::slices(span.first(pos), pos + 1).nth(1).is_some();
            for kv_head in 0..g.n_kv_heads {
                let task = |tokens, buffer, blocks, slice| Task {
                    chunk: chunk_index,
                    chunk_first_row: first_row,
                    kv_head,
                    tokens,
                    buffer,
                    blocks,
                    slice,
                };
                if spread_this {
                    let first_task = self.tasks.len();
                    for slice in attention_split::slices(span.first(pos), pos + 1) {
                        self.tasks.push(task((0, 1), buffer, blocks, Some(slice)));
                        buffer += group_floats(1);
                        blocks += group_blocks(1);
                    }
                    let tasks = (first_task, self.tasks.len());
                    self.merges.push(Merge { row: first_row, kv_head, tasks });
                    continue;
                }
                for first in (0..n_tokens).step_by(TOKENS_PER_TASK) {
                    let tokens = (first, (first + TOKENS_PER_TASK).min(n_tokens));
                    self.tasks.push(task(tokens, buffer, blocks, None));
                    buffer += group_floats(tokens.1 - tokens.0);
                    blocks += group_blocks(tokens.1 - tokens.0);
                }
            }
            first_row += n_tokens;
        }
        self.buffers.resize(buffer.max(self.buffers.len()), 0.0);
        self.blocks_needed = blocks;
    }

    /// Grows the 8-bit blocks to what the plan needs when the cache is q8_0 (never for f16,
    /// whose steps then keep no such memory).
    fn size_blocks(&mut self, cache_type: KvCacheType) {
        if cache_type == KvCacheType::Q8_0 && self.blocks.len() < self.blocks_needed {
            self.blocks.resize(self.blocks_needed, Q8Block::default());
        }
    }

    /// Tasks of this step if no row were spread over slices.
    fn unsplit_tasks(chunks: &[SeqChunk<'_>], g: &Geometry) -> usize {
        chunks.iter().map(|c| c.tokens.len().div_ceil(TOKENS_PER_TASK) * g.n_kv_heads).sum()
    }
}

/// A task's working memory: the current tile's widened K and V rows and, per query row, its
/// output accumulator, tile weights, running lane sums, running maximum and last correction
/// within the current slice, and the folded result of its slices so far; with a q8_0 cache,
/// its query rows quantized and the current tile's 8-bit keys instead of widened ones.
struct TaskBuffers<'a> {
    query_blocks: &'a mut [Q8Block],
    key_blocks: &'a mut [Q8Block],
    keys: &'a mut [f32],
    values: &'a mut [f32],
    acc: &'a mut [f32],
    weights: &'a mut [f32],
    lane_sums: &'a mut [f32],
    max: &'a mut [f32],
    correction: &'a mut [f32],
    merged_acc: &'a mut [f32],
    merged_max: &'a mut [f32],
    merged_sum: &'a mut [f32],
}

impl<'a> TaskBuffers<'a> {
    fn floats(rows: usize, head_dim: usize) -> usize {
        2 * TILE * head_dim + rows * (2 * head_dim + 2 * TILE + 4)
    }

    /// 8-bit blocks of the task's query rows and of one tile of keys, for a q8_0 cache.
    fn blocks(rows: usize, head_dim: usize) -> usize {
        (rows + TILE) * head_dim.div_ceil(Q8_GROUP)
    }

    /// `blocks` is empty with an f16 cache.
    fn split(buffer: &'a mut [f32], blocks: &'a mut [Q8Block], rows: usize, head_dim: usize) -> Self {
        let (query_blocks, key_blocks) = blocks.split_at_mut(blocks.len().min(rows * head_dim.div_ceil(Q8_GROUP)));
        let (keys, rest) = buffer.split_at_mut(TILE * head_dim);
        let (values, rest) = rest.split_at_mut(TILE * head_dim);
        let (acc, rest) = rest.split_at_mut(rows * head_dim);
        let (weights, rest) = rest.split_at_mut(rows * TILE);
        let (lane_sums, rest) = rest.split_at_mut(rows * TILE);
        let (max, rest) = rest.split_at_mut(rows);
        let (correction, rest) = rest.split_at_mut(rows);
        let (merged_acc, rest) = rest.split_at_mut(rows * head_dim);
        let (merged_max, rest) = rest.split_at_mut(rows);
        let merged_sum = &mut rest[..rows];
        Self {
            query_blocks,
            key_blocks,
            keys,
            values,
            acc,
            weights,
            lane_sums,
            max,
            correction,
            merged_acc,
            merged_max,
            merged_sum,
        }
    }

    /// Folds rows `rows`' current slice into their merged results (`first`: it is their first
    /// slice).
    fn fold_slice(&mut self, rows: std::ops::Range<usize>, head_dim: usize, first: bool) {
        let target = (&mut *self.merged_max, &mut *self.merged_sum, &mut *self.merged_acc);
        fold_partials((self.max, self.lane_sums, self.acc), target, rows, head_dim, first);
    }
}

/// Folds rows `rows` of a slice's partials (`max`, lane sums, `acc`) into merged results
/// (`max`, `sum`, `acc`).
fn fold_partials(
    partial: (&[f32], &[f32], &[f32]),
    merged: (&mut [f32], &mut [f32], &mut [f32]),
    rows: std::ops::Range<usize>,
    hd: usize,
    first: bool,
) {
    let ((max, lane_sums, acc), (merged_max, merged_sum, merged_acc)) = (partial, merged);
    for r in rows {
        let target = Merged { max: &mut merged_max[r], sum: &mut merged_sum[r], acc: &mut merged_acc[r * hd..][..hd] };
        let sum = lane_tree(&lane_sums[r * TILE..][..TILE]);
        fold(target, first, max[r], sum, &acc[r * hd..][..hd]);
    }
}

/// One KV head of one layer of one sequence's paged cache.
#[derive(Clone, Copy)]
struct KvHeadView<'a> {
    k: RowsView<'a>,
    v: RowsView<'a>,
    block_table: &'a [u32],
    /// Offset of this layer's block 0, slot 0, at this KV head.
    base: usize,
    block_stride: usize,
    slot_stride: usize,
    block_size: usize,
    head_dim: usize,
}

impl<'a> KvHeadView<'a> {
    fn new(kv: &'a KvStorage, layer: usize, block_table: &'a [u32], kv_head: usize, head_dim: usize) -> Self {
        Self {
            k: kv.keys(layer),
            v: kv.values(layer),
            block_table,
            base: kv.offset(layer, 0, kv_head, 0),
            block_stride: kv.block_stride(layer),
            slot_stride: head_dim,
            block_size: kv.block_size,
            head_dim,
        }
    }

    /// The f16 K and V rows of `positions` if they lie in one block (one run of rows) of an
    /// f16 cache.
    fn f16_run(&self, positions: (usize, usize)) -> Option<(&'a [u16], &'a [u16])> {
        let (from, to) = positions;
        if from >= to || from / self.block_size != (to - 1) / self.block_size {
            return None;
        }
        let (offset, count) = (self.offset(from), to - from);
        match (Row::run(self.k, offset, self.head_dim, count), Row::run(self.v, offset, self.head_dim, count)) {
            (Row::F16(k), Row::F16(v)) => Some((k, v)),
            _ => None,
        }
    }

    /// Offset of position `p`'s rows in `k` and `v`.
    #[inline]
    fn offset(&self, p: usize) -> usize {
        self.base
            + self.block_table[p / self.block_size] as usize * self.block_stride
            + p % self.block_size * self.slot_stride
    }
}

/// Consecutive rows of the cache (bounds-checked: a released block's entry panics rather than
/// reading another sequence's memory).
#[derive(Clone, Copy)]
enum Row<'a> {
    F16(&'a [u16]),
    /// The rows' 8-bit values and their scales (one per 32 values of a row).
    Q8(&'a [i8], &'a [u16]),
}

impl<'a> Row<'a> {
    /// The `count` rows from `offset` (one block's slots lie one after the other).
    #[inline]
    fn run(rows: RowsView<'a>, offset: usize, head_dim: usize, count: usize) -> Self {
        let len = count * head_dim;
        match rows {
            RowsView::F16(bits) => Row::F16(&bits[offset..offset + len]),
            RowsView::Q8 { quants, scales } => {
                let groups = head_dim.div_ceil(Q8_GROUP);
                Row::Q8(&quants[offset..offset + len], &scales[offset / head_dim * groups..][..count * groups])
            }
        }
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    fn best(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(8) {
            if crate::cpu::has_avx512f_f16c() {
                return Kernel::Avx512;
            }
            if crate::cpu::has_avx2_fma_f16c() {
                return Kernel::Avx2;
            }
        }
        let _ = head_dim;
        Kernel::Portable
    }

    /// Every kernel this CPU runs for `head_dim`, the portable one first (for tests).
    #[cfg(test)]
    fn available(head_dim: usize) -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(8) {
            if crate::cpu::has_avx2_fma_f16c() {
                kernels.push(Kernel::Avx2);
            }
            if crate::cpu::has_avx512f_f16c() {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// Reads the K and V rows of positions `positions` into lanes `positions - tile_start`:
    /// V widened to f32 in `values`; K widened in `keys` (f16), or copied as 8-bit blocks
    /// into `key_blocks` (q8_0, each row's last block zero-padded to 32 values). f16 to f32 is
    /// exact, and so is `q · d` (an 8-bit integer times an 11-bit significand), so every path
    /// gives the same floats.
    /// Positions go by in runs within one block, whose rows lie one after the other: one
    /// offset lookup (a division by the block size) and one widening call per run, not per row.
    fn widen_tile(self, view: &KvHeadView<'_>, tile_start: usize, positions: (usize, usize), b: &mut TaskBuffers<'_>) {
        let hd = view.head_dim;
        let groups = hd.div_ceil(Q8_GROUP);
        let mut run_start = positions.0;
        while run_start < positions.1 {
            let run_end = ((run_start / view.block_size + 1) * view.block_size).min(positions.1);
            let (offset, count) = (view.offset(run_start), run_end - run_start);
            let lanes = run_start - tile_start..run_end - tile_start;
            match Row::run(view.k, offset, hd, count) {
                Row::F16(k) => self.widen_f16(k, &mut b.keys[lanes.start * hd..lanes.end * hd]),
                Row::Q8(quants, scales) => {
                    let blocks = b.key_blocks[lanes.start * groups..lanes.end * groups].chunks_exact_mut(groups);
                    for ((blocks, quants), scales) in
                        blocks.zip(quants.chunks_exact(hd)).zip(scales.chunks_exact(groups))
                    {
                        copy_key_blocks(quants, scales, blocks);
                    }
                }
            }
            let values = &mut b.values[lanes.start * hd..lanes.end * hd];
            match Row::run(view.v, offset, hd, count) {
                Row::F16(v) => self.widen_f16(v, values),
                Row::Q8(quants, scales) => {
                    let rows =
                        values.chunks_exact_mut(hd).zip(quants.chunks_exact(hd)).zip(scales.chunks_exact(groups));
                    for ((values, quants), scales) in rows {
                        self.dequantize(quants, scales, values);
                    }
                }
            }
            run_start = run_end;
        }
    }

    fn widen_f16(self, from: &[u16], to: &mut [f32]) {
        match self {
            Kernel::Portable => to.iter_mut().zip(from).for_each(|(o, &x)| *o = f16_to_f32(x)),
            // SAFETY: both SIMD kernels are chosen only on CPUs with AVX2, FMA and F16C and for
            // head dimensions that are multiples of 8; the slices are `hd` long.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::widen(from, to) },
        }
    }

    /// `to[i] = q[i] · d[i / 32]` (exact in f32).
    fn dequantize(self, quants: &[i8], scales: &[u16], to: &mut [f32]) {
        match self {
            Kernel::Portable => {
                for (i, (o, &q)) in to.iter_mut().zip(quants).enumerate() {
                    *o = q as f32 * f16_to_f32(scales[i / Q8_GROUP]);
                }
            }
            // SAFETY: as in `widen_f16`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::dequantize(quants, scales, to) },
        }
    }

    /// 8-bit scores: `dot_q8(q, k) · scale` of each query row's blocks against the tile's key
    /// blocks in `lanes`; lanes outside get -inf.
    fn scores_q8(
        self,
        queries: &[Q8Block],
        keys: &[Q8Block],
        groups: usize,
        lanes: (usize, usize),
        scale: f32,
        scores: &mut [f32],
    ) {
        for (q, row) in queries.chunks_exact(groups).zip(scores.chunks_exact_mut(TILE)) {
            row[..lanes.0].fill(f32::NEG_INFINITY);
            row[lanes.1..].fill(f32::NEG_INFINITY);
            for j in lanes.0..lanes.1 {
                let k = &keys[j * groups..][..groups];
                row[j] = match self {
                    Kernel::Portable => portable::dot_q8(q, k),
                    // SAFETY: both SIMD kernels are chosen only on CPUs with AVX2.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::dot_q8(q, k) },
                } * scale;
            }
        }
    }

    /// Whether this kernel reads a decode row's f16 K/V straight from the cache
    /// ([`Kernel::scores_cached`], [`Kernel::accumulate_cached`]) instead of widening them
    /// into scratch first.
    fn reads_cached_rows(self) -> bool {
        match self {
            Kernel::Portable => false,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => true,
        }
    }

    /// Scores of `queries` (`rows` heads) against the tile's widened keys (lane `j` at row
    /// `j`) in `lanes`, into `scores` (`rows` × [`TILE`]); lanes outside `lanes` get -inf.
    fn scores(
        self,
        queries: &[f32],
        keys: &[f32],
        head_dim: usize,
        lanes: (usize, usize),
        scale: f32,
        scores: &mut [f32],
    ) {
        mask_outside(scores, lanes);
        match self {
            Kernel::Portable => portable::scores(queries, keys, head_dim, lanes, scale, scores),
            // SAFETY: chosen only with the CPU features and head dimension each needs; the
            // keys hold every lane's row.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                assert!(keys.len() >= TILE * head_dim);
                avx2::scores(queries, simd_rows(keys, 0, head_dim), head_dim, lanes, scale, scores)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                assert!(keys.len() >= TILE * head_dim);
                avx512::scores(queries, simd_rows(keys, 0, head_dim), head_dim, lanes, scale, scores)
            },
        }
    }

    /// [`Kernel::scores`] against f16 keys read in place: one block's run of rows, lane `j`
    /// at row `j - first` (only on kernels that [`Kernel::reads_cached_rows`]).
    #[allow(clippy::too_many_arguments)]
    fn scores_cached(
        self,
        queries: &[f32],
        keys: &[u16],
        first: usize,
        head_dim: usize,
        lanes: (usize, usize),
        scale: f32,
        scores: &mut [f32],
    ) {
        mask_outside(scores, lanes);
        assert!(first <= lanes.0 && lanes.1 <= TILE && (lanes.1 - first) * head_dim <= keys.len());
        match self {
            Kernel::Portable => unreachable!("the portable kernel widens cached rows"),
            // SAFETY: as in `scores`; the run holds every lane's row (checked above).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                avx2::scores(queries, simd_rows(keys, first, head_dim), head_dim, lanes, scale, scores)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                avx512::scores(queries, simd_rows(keys, first, head_dim), head_dim, lanes, scale, scores)
            },
        }
    }

    /// The online-softmax step of each row: turns `weights` (a row's scores) into
    /// `e^(s - m')`, updates the running maximum and lane sums, and records the correction.
    fn update_softmax(self, weights: &mut [f32], max: &mut [f32], lane_sums: &mut [f32], correction: &mut [f32]) {
        match self {
            Kernel::Portable => portable::update_softmax(weights, max, lane_sums, correction),
            // SAFETY: chosen only on CPUs with AVX2 and FMA; `attend_tiles` passes TILE weights
            // and lane sums per row.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::update_softmax(weights, max, lane_sums, correction) },
            // SAFETY: chosen only on CPUs with AVX-512F as well; shapes as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::update_softmax(weights, max, lane_sums, correction) },
        }
    }

    /// `acc = acc · c + Σ p_j v_j` over the positions in `lanes`, in order, for each row, with
    /// the tile's widened values (lane `j` at row `j`).
    fn accumulate(self, values: &[f32], weights: &[f32], correction: &[f32], lanes: (usize, usize), acc: &mut [f32]) {
        let hd = acc.len() / correction.len().max(1);
        match self {
            Kernel::Portable => portable::accumulate(values, weights, correction, lanes, acc),
            // SAFETY: chosen only with the CPU features and head dimension each needs; the
            // values hold every lane's row.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                assert!(values.len() >= TILE * hd);
                avx2::accumulate(simd_rows(values, 0, hd), weights, correction, lanes, acc)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                assert!(values.len() >= TILE * hd);
                avx512::accumulate(simd_rows(values, 0, hd), weights, correction, lanes, acc)
            },
        }
    }

    /// [`Kernel::accumulate`] with f16 values read in place: one block's run of rows, lane
    /// `j` at row `j - first` (only on kernels that [`Kernel::reads_cached_rows`]).
    #[allow(clippy::too_many_arguments)]
    fn accumulate_cached(
        self,
        values: &[u16],
        first: usize,
        hd: usize,
        weights: &[f32],
        correction: &[f32],
        lanes: (usize, usize),
        acc: &mut [f32],
    ) {
        assert!(first <= lanes.0 && lanes.1 <= TILE && (lanes.1 - first) * hd <= values.len());
        match self {
            Kernel::Portable => unreachable!("the portable kernel widens cached rows"),
            // SAFETY: as in `accumulate`; the run holds every lane's row (checked above).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::accumulate(simd_rows(values, first, hd), weights, correction, lanes, acc) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                avx512::accumulate(simd_rows(values, first, hd), weights, correction, lanes, acc)
            },
        }
    }
}

/// Sets each score row's lanes outside `lanes` to -inf.
fn mask_outside(scores: &mut [f32], lanes: (usize, usize)) {
    for row in scores.chunks_exact_mut(TILE) {
        row[..lanes.0].fill(f32::NEG_INFINITY);
        row[lanes.1..].fill(f32::NEG_INFINITY);
    }
}

/// The SIMD kernels' view of checked rows.
#[cfg(target_arch = "x86_64")]
fn simd_rows<E: lanes::Element>(rows: &[E], first: usize, head_dim: usize) -> lanes::TileRows<E> {
    lanes::TileRows::new(rows, first, head_dim)
}

/// The attention kernel this CPU runs for head dimensions that are multiples of 8 (every
/// supported model's), as [`crate::kernel_info`] reports it.
pub(crate) fn kernel_name() -> &'static str {
    match Kernel::best(64) {
        Kernel::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => "avx512",
    }
}

/// A tile's sixteen lane sums added as the fixed tree the contract names.
fn lane_tree(sums: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    for (i, x) in s.iter_mut().enumerate() {
        *x = sums[i] + sums[i + 8];
    }
    let q = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let h = [q[0] + q[2], q[1] + q[3]];
    h[0] + h[1]
}

/// Causal attention of every row of the step: for each token at position `pos` and each query
/// head, softmax(q·k · scale) over the sequence's positions in `span` (all of
/// `0..=pos`, or a sliding window ending at `pos`) applied to V.
/// Reads queries from `qkv` (rows of `qkv_row_len`) and writes `out` (rows of
/// `n_heads * head_dim`). K/V of this step's tokens must already be in `kv`.
///
/// With `quantized` (`out`'s rows' [`quantized_output_blocks`] each), each task also
/// quantizes the output it writes, head group by head group while it is in cache, for the
/// output projection ([`crate::quant::QMatrix::matmul_prequantized`]): the bits
/// [`crate::quant::quantize_row`] gives for the whole row, since a block never spans two
/// heads, and no separate quantization pass and pool dispatch per layer.
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
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    let spread = attention_split::spread_slices(AttentionScratch::unsplit_tasks(chunks, g), pool.n_threads());
    attend_with(Kernel::best(g.head_dim), spread, scratch, g, layer, span, chunks, kv, qkv, out, quantized, pool);
}

/// The blocks [`attend`] quantizes each output row to, or 0 when it cannot: a head whose
/// dimension is not a whole number of blocks would put one block across two heads' tasks.
pub(crate) fn quantized_output_blocks(g: &Geometry) -> usize {
    if g.head_dim.is_multiple_of(ACTIVATION_BLOCK) {
        g.q_dim() / ACTIVATION_BLOCK
    } else {
        0
    }
}

/// [`attend`] with the kernel and the slice spreading chosen by the caller (tests try every
/// combination: the bits must not change).
#[allow(clippy::too_many_arguments)]
fn attend_with(
    kernel: Kernel,
    spread: bool,
    scratch: &mut AttentionScratch,
    g: &Geometry,
    layer: usize,
    span: Span,
    chunks: &[SeqChunk<'_>],
    kv: &KvStorage,
    qkv: &[f32],
    out: &mut [f32],
    quantized: Option<&mut [Q8Block]>,
    pool: &ThreadPool,
) {
    scratch.plan(chunks, g, span, spread);
    scratch.size_blocks(kv.cache_type());
    let (tasks, merges) = (&scratch.tasks, &scratch.merges);
    let blocks_per_row = quantized_output_blocks(g);
    if let Some(quantized) = &quantized {
        assert!(blocks_per_row > 0, "head dimension {} is not a whole number of blocks", g.head_dim);
        assert_eq!(quantized.len() * g.q_dim(), out.len() * blocks_per_row, "quantized output blocks");
    }
    let quantized = quantized.map(DisjointSlice::new);
    // The output of one (row, head group) quantized into its own blocks: its first value
    // `row * q_dim + kv_head * group_len` starts a block (head_dim is a multiple of 32).
    let quantize_group = |row: usize, kv_head: usize, out: &[f32]| {
        if let Some(quantized) = &quantized {
            let first = (row * g.q_dim() + kv_head * out.len()) / ACTIVATION_BLOCK;
            // SAFETY: these blocks cover exactly the output slots of the caller, which owns them.
            let blocks = unsafe { quantized.range_mut(first, out.len() / ACTIVATION_BLOCK) };
            crate::quant::quantize_row(out, blocks);
        }
    };
    let out = DisjointSlice::new(out);
    let buffers = DisjointSlice::new(&mut scratch.buffers);
    let blocks = DisjointSlice::new(&mut scratch.blocks);
    let (q_dim, group_len) = (g.q_dim(), g.group() * g.head_dim);
    pool.run(tasks.len(), &|task_index| {
        let task = tasks[task_index];
        let chunk = &chunks[task.chunk];
        let view = KvHeadView::new(kv, layer, chunk.table(kv.pool_of(layer)), task.kv_head, g.head_dim);
        let rows = (task.tokens.1 - task.tokens.0) * g.group();
        // SAFETY: each task owns its own stretch of the buffers (laid out by `plan`).
        let buffer = unsafe { buffers.range_mut(task.buffer, TaskBuffers::floats(rows, g.head_dim)) };
        let blocks = match kv.cache_type() {
            // SAFETY: as the buffers.
            KvCacheType::Q8_0 => unsafe { blocks.range_mut(task.blocks, TaskBuffers::blocks(rows, g.head_dim)) },
            KvCacheType::F16 => &mut [],
        };
        let mut b = TaskBuffers::split(buffer, blocks, rows, g.head_dim);
        attend_task(kernel, g, span, chunk, &task, &view, qkv, &mut b);
        if task.slice.is_some() {
            return; // a partial: its merge writes the output
        }
        for t in task.tokens.0..task.tokens.1 {
            let row = task.chunk_first_row + t;
            // SAFETY: the (row, head group) output slots belong to this task alone.
            let out = unsafe { out.range_mut(row * q_dim + task.kv_head * group_len, group_len) };
            let first_row = (t - task.tokens.0) * g.group();
            finish_rows(&b, first_row, g.group(), g.head_dim, out);
            quantize_group(row, task.kv_head, out);
        }
    });
    pool.run(merges.len(), &|merge_index| {
        let merge = merges[merge_index];
        let (rows, hd) = (g.group(), g.head_dim);
        let floats = TaskBuffers::floats(rows, hd);
        // SAFETY: a merge's slice tasks belong to it alone, and the first pass has finished.
        // The fold reads only floats: no 8-bit blocks.
        let partial = |task: usize| {
            TaskBuffers::split(unsafe { buffers.range_mut(tasks[task].buffer, floats) }, &mut [], rows, hd)
        };
        let mut merged = partial(merge.tasks.0);
        merged.fold_slice(0..rows, hd, true);
        for task in merge.tasks.0 + 1..merge.tasks.1 {
            let slice = partial(task);
            let target = (&mut *merged.merged_max, &mut *merged.merged_sum, &mut *merged.merged_acc);
            fold_partials((slice.max, slice.lane_sums, slice.acc), target, 0..rows, hd, false);
        }
        // SAFETY: the (row, head group) output slots belong to this merge alone.
        let out = unsafe { out.range_mut(merge.row * q_dim + merge.kv_head * group_len, group_len) };
        finish_rows(&merged, 0, rows, hd, out);
        quantize_group(merge.row, merge.kv_head, out);
    });
}

/// The task's positions slice by slice (one slice for a slice task), each slice's tiles from a
/// fresh online-softmax state, folded into the rows' merged results in order (left as a
/// partial in a slice task).
#[allow(clippy::too_many_arguments)]
fn attend_task(
    kernel: Kernel,
    g: &Geometry,
    span: Span,
    chunk: &SeqChunk<'_>,
    task: &Task,
    view: &KvHeadView<'_>,
    qkv: &[f32],
    b: &mut TaskBuffers<'_>,
) {
    // Quantized once per task: every slice and tile of the task uses the same query blocks.
    if !b.query_blocks.is_empty() {
        quantize_queries(g, task, qkv, b.query_blocks);
    }
    // A token's attended positions, `first..=pos`: both ends grow with the token index.
    let positions = |t: usize| {
        let pos = chunk.start_pos + t;
        (span.first(pos), pos + 1)
    };
    let (t0, t1) = task.tokens;
    let range = task.slice.unwrap_or((positions(t0).0, positions(t1 - 1).1));
    for slice in attention_split::slices(range.0, range.1) {
        b.acc.fill(0.0);
        b.lane_sums.fill(0.0);
        b.max.fill(f32::NEG_INFINITY);
        let in_slice = |t: usize| overlap(positions(t), slice);
        attend_tiles(kernel, g, task, view, qkv, b, slice, in_slice);
        if task.slice.is_some() {
            continue;
        }
        for t in t0..t1 {
            if let Some((from, _)) = in_slice(t) {
                let rows = (t - t0) * g.group()..(t - t0 + 1) * g.group();
                b.fold_slice(rows, g.head_dim, from == positions(t).0);
            }
        }
    }
}

/// Every tile of `slice`, each widened once and used by every query row it concerns
/// (`in_slice(t)`: token `t`'s positions within the slice).
#[allow(clippy::too_many_arguments)]
fn attend_tiles(
    kernel: Kernel,
    g: &Geometry,
    task: &Task,
    view: &KvHeadView<'_>,
    qkv: &[f32],
    b: &mut TaskBuffers<'_>,
    slice: (usize, usize),
    in_slice: impl Fn(usize) -> Option<(usize, usize)>,
) {
    let (hd, group) = (g.head_dim, g.group());
    let (groups, quantized) = (hd.div_ceil(Q8_GROUP), !b.query_blocks.is_empty());
    let (t0, t1) = task.tokens;
    let in_tile = |t: usize, tile| in_slice(t).and_then(|p| overlap(p, tile));
    for tile_start in (slice.0 / TILE * TILE..slice.1).step_by(TILE) {
        let tile = (tile_start, tile_start + TILE);
        let Some(first_token) = (t0..t1).find(|&t| in_tile(t, tile).is_some()) else { continue };
        let last_token = (first_token..t1).take_while(|&t| in_tile(t, tile).is_some()).last().unwrap_or(first_token);
        let (Some(first), Some(last)) = (in_tile(first_token, tile), in_tile(last_token, tile)) else { continue };
        // The next tile's rows start on their way from memory while this one is computed: the
        // paged blocks lie anywhere, and a block's rows are too short a run for the hardware
        // prefetcher to catch on. (Two or three tiles ahead, or the next tasks' first tiles
        // too, measured no faster: `attention_batch_probe`.)
        prefetch_rows(view, (tile.1, (tile.1 + TILE).min(slice.1)));
        // A decode row (one token) reads f16 rows straight from the cache where the kernel
        // can: each row is loaded once per pass over the group's heads, with no scratch copy.
        let cached = if t1 - t0 == 1 && kernel.reads_cached_rows() { view.f16_run((first.0, last.1)) } else { None };
        if cached.is_none() {
            kernel.widen_tile(view, tile_start, (first.0, last.1), b);
        }
        let first_lane = first.0 - tile_start;
        for t in first_token..=last_token {
            let Some((from, to)) = in_tile(t, tile) else { continue };
            let lanes = (from - tile_start, to - tile_start);
            let first_head = task.kv_head * group;
            let queries = &qkv[(task.chunk_first_row + t) * g.qkv_row_len + first_head * hd..][..group * hd];
            let rows = (t - t0) * group..(t - t0 + 1) * group;
            let weights = &mut b.weights[rows.start * TILE..rows.end * TILE];
            if quantized {
                let queries = &b.query_blocks[rows.start * groups..rows.end * groups];
                kernel.scores_q8(queries, b.key_blocks, groups, lanes, g.scale, weights);
            } else {
                match cached {
                    Some((keys, _)) => kernel.scores_cached(queries, keys, first_lane, hd, lanes, g.scale, weights),
                    None => kernel.scores(queries, b.keys, hd, lanes, g.scale, weights),
                }
            }
            let (max, sums) = (&mut b.max[rows.clone()], &mut b.lane_sums[rows.start * TILE..rows.end * TILE]);
            kernel.update_softmax(weights, max, sums, &mut b.correction[rows.clone()]);
            let acc = &mut b.acc[rows.start * hd..rows.end * hd];
            let correction = &b.correction[rows];
            match cached {
                Some((_, values)) => kernel.accumulate_cached(values, first_lane, hd, weights, correction, lanes, acc),
                None => kernel.accumulate(b.values, weights, correction, lanes, acc),
            }
        }
    }
}

/// Asks the CPU to start loading the K and V rows of `positions` into its cache, a block's run
/// of rows at a time (a hint: no result depends on it).
fn prefetch_rows(view: &KvHeadView<'_>, positions: (usize, usize)) {
    let mut run_start = positions.0;
    while run_start < positions.1 {
        let run_end = ((run_start / view.block_size + 1) * view.block_size).min(positions.1);
        let (offset, len) = (view.offset(run_start), (run_end - run_start) * view.head_dim);
        for rows in [view.k, view.v] {
            match rows {
                RowsView::F16(bits) => prefetch_lines(bits.get(offset..offset + len).unwrap_or_default()),
                RowsView::Q8 { quants, scales } => {
                    prefetch_lines(quants.get(offset..offset + len).unwrap_or_default());
                    // The run's scales: block-major, one block's lie apart from the next's.
                    let groups = view.head_dim.div_ceil(Q8_GROUP);
                    let first = offset / view.head_dim * groups;
                    prefetch_lines(scales.get(first..first + len / view.head_dim * groups).unwrap_or_default());
                }
            }
        }
        run_start = run_end;
    }
}

/// Quantizes the task's query rows (each token's heads of the task's KV head) to 8-bit blocks
/// of 32, as the matmuls quantize activations (the same bits on every path), each row's last
/// block zero-padded.
fn quantize_queries(g: &Geometry, task: &Task, qkv: &[f32], blocks: &mut [Q8Block]) {
    let hd = g.head_dim;
    let groups = hd.div_ceil(Q8_GROUP);
    let mut run = [0f32; Q8_GROUP];
    let mut blocks = blocks.chunks_exact_mut(groups);
    for t in task.tokens.0..task.tokens.1 {
        let first_head = task.kv_head * g.group();
        let row = &qkv[(task.chunk_first_row + t) * g.qkv_row_len + first_head * hd..][..g.group() * hd];
        for (query, blocks) in row.chunks_exact(hd).zip(blocks.by_ref()) {
            for (values, block) in query.chunks(Q8_GROUP).zip(blocks.iter_mut()) {
                run.fill(0.0);
                run[..values.len()].copy_from_slice(values);
                crate::quant::quantize_row(&run, std::slice::from_mut(block));
            }
        }
    }
}

/// One cached 8-bit K row as blocks of 32 (the last zero-padded; zeros add nothing to the
/// integer sums).
fn copy_key_blocks(quants: &[i8], scales: &[u16], blocks: &mut [Q8Block]) {
    for ((block, run), &scale) in blocks.iter_mut().zip(quants.chunks(Q8_GROUP)).zip(scales) {
        block.d = f16_to_f32(scale);
        block.q[..run.len()].copy_from_slice(run);
        block.q[run.len()..].fill(0);
    }
}

/// The positions two half-open ranges share, if any.
fn overlap(a: (usize, usize), b: (usize, usize)) -> Option<(usize, usize)> {
    let (from, to) = (a.0.max(b.0), a.1.min(b.1));
    (from < to).then_some((from, to))
}

/// `out = acc · (1 / l)` of the merged results of `rows` query rows from `first_row`.
fn finish_rows(b: &TaskBuffers<'_>, first_row: usize, rows: usize, head_dim: usize, out: &mut [f32]) {
    for r in 0..rows {
        let row = first_row + r;
        let inverse = 1.0 / b.merged_sum[row];
        let acc = &b.merged_acc[row * head_dim..][..head_dim];
        for (o, &a) in out[r * head_dim..][..head_dim].iter_mut().zip(acc) {
            *o = a * inverse;
        }
    }
}

/// The contract in plain Rust (`f32::mul_add` is a fused multiply-add on every target).
mod portable {
    use super::TILE;
    use crate::models::elementwise::exp_nonpositive;

    /// `dot(q, k)` with 32 partial sums and the fixed tree.
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        let mut p = [0f32; 32];
        for (d, (&a, &b)) in q.iter().zip(k).enumerate() {
            p[d % 32] = a.mul_add(b, p[d % 32]);
        }
        let mut r = [0f32; 8];
        for (i, x) in r.iter_mut().enumerate() {
            *x = (p[i] + p[i + 16]) + (p[i + 8] + p[i + 24]);
        }
        let q = [r[0] + r[4], r[1] + r[5], r[2] + r[6], r[3] + r[7]];
        let h = [q[0] + q[2], q[1] + q[3]];
        h[0] + h[1]
    }

    pub(super) fn scores(queries: &[f32], keys: &[f32], hd: usize, lanes: (usize, usize), scale: f32, out: &mut [f32]) {
        for (q, row) in queries.chunks_exact(hd).zip(out.chunks_exact_mut(TILE)) {
            for j in lanes.0..lanes.1 {
                row[j] = dot(q, &keys[j * hd..][..hd]) * scale;
            }
        }
    }

    /// `dot_q8(q, k)`: per block, eight exact integer sums of four products each (lane `l`:
    /// values `4l..4l+4`), each added to its lane as `fma(d_q · d_k, sum, lane)`; the lanes
    /// then summed as the fixed tree `l + (l+4)`, `+2`, `+1`.
    pub(super) fn dot_q8(q: &[crate::quant::Q8Block], k: &[crate::quant::Q8Block]) -> f32 {
        let mut lanes = [0f32; 8];
        for (a, b) in q.iter().zip(k) {
            let d = a.d * b.d;
            for (l, lane) in lanes.iter_mut().enumerate() {
                let sum: i32 = (4 * l..4 * l + 4).map(|i| a.q[i] as i32 * b.q[i] as i32).sum();
                *lane = d.mul_add(sum as f32, *lane);
            }
        }
        let q = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
        (q[0] + q[2]) + (q[1] + q[3])
    }

    /// The larger of two floats as `maxps` picks it: `a` if `a > b`, else `b` (so a NaN `a`
    /// gives `b`, and of two zeros the second).
    fn max_ps(a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }

    /// The maximum of a tile's scores as the fixed tree of `max_ps`: lanes `i` and `i + 8`,
    /// then `+4`, `+2`, `+1` (the first operand always the lower lane).
    pub(super) fn tile_max(scores: &[f32]) -> f32 {
        let mut m = [0f32; 8];
        for (i, m) in m.iter_mut().enumerate() {
            *m = max_ps(scores[i], scores[i + 8]);
        }
        let q = [max_ps(m[0], m[4]), max_ps(m[1], m[5]), max_ps(m[2], m[6]), max_ps(m[3], m[7])];
        max_ps(max_ps(q[0], q[2]), max_ps(q[1], q[3]))
    }

    /// Each row's online-softmax step: `m' = max_ps(tile_max, m)`, `c = e^(m - m')`,
    /// `w = e^(s - m')`, `l = fma(l, c, w)`.
    pub(super) fn update_softmax(weights: &mut [f32], max: &mut [f32], lane_sums: &mut [f32], correction: &mut [f32]) {
        let rows = weights.chunks_exact_mut(TILE).zip(lane_sums.chunks_exact_mut(TILE));
        for (((weights, sums), max), correction) in rows.zip(max.iter_mut()).zip(correction.iter_mut()) {
            let new_max = max_ps(tile_max(weights), *max);
            *correction = exp_nonpositive(*max - new_max);
            *max = new_max;
            for (w, l) in weights.iter_mut().zip(sums.iter_mut()) {
                *w = exp_nonpositive(*w - new_max);
                *l = l.mul_add(*correction, *w);
            }
        }
    }

    pub(super) fn accumulate(
        values: &[f32],
        weights: &[f32],
        correction: &[f32],
        lanes: (usize, usize),
        acc: &mut [f32],
    ) {
        let hd = acc.len() / correction.len();
        for ((acc, w), &c) in acc.chunks_exact_mut(hd).zip(weights.chunks_exact(TILE)).zip(correction) {
            acc.iter_mut().for_each(|a| *a *= c);
            for j in lanes.0..lanes.1 {
                for (a, &v) in acc.iter_mut().zip(&values[j * hd..][..hd]) {
                    *a = w[j].mul_add(v, *a);
                }
            }
        }
    }
}

/// The SIMD kernels' view of a tile's K or V rows (widened or in place), shared by the AVX2
/// and AVX-512 kernels.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    /// A tile's K or V rows as a kernel reads them: lane `j`'s row starts `j · head_dim`
    /// elements after `lane0` (a pointer that lies before the rows when `first > 0`, used
    /// only through wrapping arithmetic that lands back inside them). The rows are widened f32
    /// (the task's scratch, `first` 0) or f16 straight from the cache (one block's run, `first`
    /// its first lane), converted in registers: f16 to f32 is exact, so both give the kernels
    /// the same floats and the same bits.
    pub(super) struct TileRows<E> {
        lane0: *const E,
        /// The first lane whose row is there.
        pub first: usize,
    }

    impl<E> Clone for TileRows<E> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<E> Copy for TileRows<E> {}

    impl<E: Element> TileRows<E> {
        /// The rows of lanes `first..` of a `hd`-float row length, starting at `rows`.
        pub(super) fn new(rows: &[E], first: usize, hd: usize) -> Self {
            TileRows { lane0: rows.as_ptr().wrapping_sub(first * hd), first }
        }

        /// Lane `j`'s row (`j >= first`).
        #[inline(always)]
        pub(super) fn row(self, j: usize, hd: usize) -> *const E {
            self.lane0.wrapping_add(j * hd)
        }
    }

    /// An element type of K/V rows the kernels read. Both loads are called only from kernels
    /// compiled with the features they need (AVX2 and F16C; AVX-512F for `load`), into which
    /// they are inlined.
    pub(super) trait Element {
        /// Eight floats from `at`.
        unsafe fn load8(at: *const Self) -> __m256;
        /// Sixteen floats from `at` (with `mask` `0x00ff`: eight, the rest zero; `mask` is
        /// `0xffff` or `0x00ff`).
        unsafe fn load(at: *const Self, mask: __mmask16) -> __m512;
    }

    impl Element for f32 {
        #[inline(always)]
        unsafe fn load8(at: *const f32) -> __m256 {
            _mm256_loadu_ps(at)
        }

        #[inline(always)]
        unsafe fn load(at: *const f32, mask: __mmask16) -> __m512 {
            if mask == 0xffff {
                _mm512_loadu_ps(at)
            } else {
                _mm512_maskz_loadu_ps(mask, at)
            }
        }
    }

    impl Element for u16 {
        #[inline(always)]
        unsafe fn load8(at: *const u16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i))
        }

        #[inline(always)]
        unsafe fn load(at: *const u16, mask: __mmask16) -> __m512 {
            if mask == 0xffff {
                _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i))
            } else {
                _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_loadu_si128(at as *const __m128i)))
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::lanes::{Element, TileRows};
    use super::{ROWS_PER_PASS, TILE};
    use crate::models::elementwise::simd::exp_nonpositive;

    /// f16 to f32, 8 values at a time.
    ///
    /// # Safety
    /// AVX2 and F16C; `to` as long as `from`, a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen(from: &[u16], to: &mut [f32]) {
        assert!(to.len() == from.len() && from.len().is_multiple_of(8));
        for i in (0..from.len()).step_by(8) {
            let wide = _mm256_cvtph_ps(_mm_loadu_si128(from.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_ps(to.as_mut_ptr().add(i), wide);
        }
    }

    /// `q · d` for an 8-bit row with a scale per 32 values, 8 values at a time.
    ///
    /// # Safety
    /// AVX2; `to` as long as `quants`, a multiple of 8; a scale per 32 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize(quants: &[i8], scales: &[u16], to: &mut [f32]) {
        assert!(to.len() == quants.len() && quants.len().is_multiple_of(8));
        assert!(scales.len() >= quants.len().div_ceil(32));
        for i in (0..quants.len()).step_by(8) {
            let eight = _mm_loadl_epi64(quants.as_ptr().add(i) as *const __m128i);
            let wide = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight));
            let d = _mm256_set1_ps(crate::f16::f16_to_f32(scales[i / 32]));
            _mm256_storeu_ps(to.as_mut_ptr().add(i), _mm256_mul_ps(wide, d));
        }
    }

    /// [`super::portable::dot_q8`]: `maddubs` of |q| and k signed by q gives the pair sums
    /// (at most 2 · 127 · 127, no saturation: the quantizers never give -128), `madd` with
    /// ones the eight sums of four.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8(q: &[crate::quant::Q8Block], k: &[crate::quant::Q8Block]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut lanes = _mm256_setzero_ps();
        for (a, b) in q.iter().zip(k) {
            let qa = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
            let kb = _mm256_loadu_si256(b.q.as_ptr() as *const __m256i);
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(qa, qa), _mm256_sign_epi8(kb, qa));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            lanes = _mm256_fmadd_ps(_mm256_set1_ps(a.d * b.d), sums, lanes);
        }
        horizontal_sum(lanes)
    }

    /// Lanes summed in a fixed order: `i + (i+4)`, then `+2`, then `+1`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn horizontal_sum(x: __m256) -> f32 {
        let pairs = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let halves = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
        _mm_cvtss_f32(_mm_add_ss(halves, _mm_shuffle_ps::<1>(halves, halves)))
    }

    /// # Safety
    /// AVX2, FMA and F16C; `head_dim` a multiple of 8; `queries` whole rows of `head_dim`,
    /// `keys` [`TILE`] rows, `out` [`TILE`] per query row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<E: Element>(
        queries: &[f32],
        keys: TileRows<E>,
        hd: usize,
        lanes: (usize, usize),
        scale: f32,
        out: &mut [f32],
    ) {
        let rows = queries.len() / hd;
        assert!(hd.is_multiple_of(8) && out.len() == rows * TILE && keys.first <= lanes.0 && lanes.1 <= TILE);
        // Three rows of four accumulators and one key's four vectors fill the 16 registers.
        for first in (0..rows).step_by(3) {
            let q = queries.as_ptr().add(first * hd);
            let o = out.as_mut_ptr().add(first * TILE);
            for j in lanes.0..lanes.1 {
                let k = keys.row(j, hd);
                match rows - first {
                    1 => score_rows::<E, 1>(q, k, hd, scale, o.add(j)),
                    2 => score_rows::<E, 2>(q, k, hd, scale, o.add(j)),
                    _ => score_rows::<E, 3>(q, k, hd, scale, o.add(j)),
                }
            }
        }
    }

    /// `R` query rows against one key; writes `out[r * TILE]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn score_rows<E: Element, const R: usize>(q: *const f32, k: *const E, hd: usize, scale: f32, out: *mut f32) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut d = 0;
        while d < hd {
            // Dimension d goes to partial sum d mod 32: vector (d mod 32) / 8.
            let slices = ((hd - d) / 8).min(4);
            for s in 0..slices {
                let key = E::load8(k.add(d + 8 * s));
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc[s] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(r * hd + d + 8 * s)), key, acc[s]);
                }
            }
            d += 32;
        }
        for (r, a) in acc.iter().enumerate() {
            let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
            *out.add(r * TILE) = horizontal_sum(sum) * scale;
        }
    }

    /// [`super::portable::update_softmax`] in registers: the tile maximum as the same tree of
    /// `maxps` (operands in the same order), the correction by the vector `e^x` (the scalar
    /// one's twin, the same bits), and no call into libm's software `fmaf`.
    ///
    /// # Safety
    /// AVX2 and FMA; [`TILE`] weights and lane sums per row, one maximum and correction per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn update_softmax(
        weights: &mut [f32],
        max: &mut [f32],
        sums: &mut [f32],
        correction: &mut [f32],
    ) {
        let rows = max.len();
        assert!(weights.len() == rows * TILE && sums.len() == rows * TILE && correction.len() == rows);
        for r in 0..rows {
            let (w, l) = (weights.as_mut_ptr().add(r * TILE), sums.as_mut_ptr().add(r * TILE));
            let (low, high) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
            let (new_max, c) = new_max_and_correction(low, high, &mut max[r], &mut correction[r]);
            let (new_max, c) = (_mm256_broadcastss_ps(new_max), _mm256_broadcastss_ps(c));
            for (i, x) in [(0, low), (8, high)] {
                let p = exp_nonpositive(_mm256_sub_ps(x, new_max));
                _mm256_storeu_ps(w.add(i), p);
                _mm256_storeu_ps(l.add(i), _mm256_fmadd_ps(_mm256_loadu_ps(l.add(i)), c, p));
            }
        }
    }

    /// One row's tile maximum (lanes `low` and `high`, the tree of `maxps` the portable
    /// `tile_max` states), its new running maximum `m' = max(tile max, m)` and correction
    /// `c = e^(m - m')`, stored in `max` and `correction` and returned in lane 0 (shared with
    /// the AVX-512 kernel, so both take them by the same instructions).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn new_max_and_correction(
        low: __m256,
        high: __m256,
        max: &mut f32,
        correction: &mut f32,
    ) -> (__m128, __m128) {
        let eight = _mm256_max_ps(low, high);
        let four = _mm_max_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps::<1>(eight));
        let two = _mm_max_ps(four, _mm_movehl_ps(four, four));
        let tile_max = _mm_max_ss(two, _mm_shuffle_ps::<1>(two, two));
        let old_max = _mm_set_ss(*max);
        let new_max = _mm_max_ss(tile_max, old_max);
        // A maximum that stays (the usual case deep in a context) gives `e^0`, exactly 1.
        let c = if _mm_comigt_ss(tile_max, old_max) == 0 && max.is_finite() {
            _mm_set_ss(1.0)
        } else {
            _mm256_castps256_ps128(exp_nonpositive(_mm256_castps128_ps256(_mm_sub_ss(old_max, new_max))))
        };
        *correction = _mm_cvtss_f32(c);
        *max = _mm_cvtss_f32(new_max);
        (new_max, c)
    }

    /// # Safety
    /// AVX2 and FMA; `acc` whole rows of a `head_dim` that is a multiple of 8, one per
    /// `correction`; `weights` [`TILE`] per row; `values` [`TILE`] rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn accumulate<E: Element>(
        values: TileRows<E>,
        weights: &[f32],
        correction: &[f32],
        lanes: (usize, usize),
        acc: &mut [f32],
    ) {
        let rows = correction.len();
        let hd = acc.len() / rows;
        assert!(hd.is_multiple_of(8) && acc.len() == rows * hd && weights.len() == rows * TILE);
        assert!(values.first <= lanes.0 && lanes.1 <= TILE);
        const _: () = assert!(ROWS_PER_PASS >= 3);
        for first in (0..rows).step_by(3) {
            let pass = Pass {
                values,
                weights: weights.as_ptr().add(first * TILE),
                correction: correction.as_ptr().add(first),
                acc: acc.as_mut_ptr().add(first * hd),
                hd,
                lanes,
            };
            let mut d = 0;
            while d < hd {
                let width = ((hd - d) / 8).min(4);
                match (rows - first, width) {
                    (1, 4) => pass.dims::<1, 4>(d),
                    (2, 4) => pass.dims::<2, 4>(d),
                    (_, 4) => pass.dims::<3, 4>(d),
                    (1, _) => pass.dims::<1, 1>(d),
                    (2, _) => pass.dims::<2, 1>(d),
                    (_, _) => pass.dims::<3, 1>(d),
                }
                d += if width == 4 { 32 } else { 8 };
            }
        }
    }

    /// A few query rows' accumulators over one tile.
    struct Pass<E> {
        values: TileRows<E>,
        weights: *const f32,
        correction: *const f32,
        acc: *mut f32,
        hd: usize,
        lanes: (usize, usize),
    }

    impl<E: Element> Pass<E> {
        /// `R` rows × `W` vectors of dims from `d`, in registers while the positions go by.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn dims<const R: usize, const W: usize>(&self, d: usize) {
            let mut acc = [[_mm256_setzero_ps(); W]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                let c = _mm256_set1_ps(*self.correction.add(r));
                for (w, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_mul_ps(_mm256_loadu_ps(self.acc.add(r * self.hd + d + 8 * w)), c);
                }
            }
            for j in self.lanes.0..self.lanes.1 {
                let row = self.values.row(j, self.hd).add(d);
                let mut v = [_mm256_setzero_ps(); W];
                for (w, v) in v.iter_mut().enumerate() {
                    *v = E::load8(row.add(8 * w));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p = _mm256_set1_ps(*self.weights.add(r * TILE + j));
                    for (a, &v) in acc.iter_mut().zip(&v) {
                        *a = _mm256_fmadd_ps(p, v, *a);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (w, &a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(self.acc.add(r * self.hd + d + 8 * w), a);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::lanes::{Element, TileRows};
    use super::{ROWS_PER_PASS, TILE};
    use crate::models::elementwise::simd::exp_nonpositive_x16;

    /// [`super::avx2::update_softmax`] with a row's 16 weights in one ZMM: the maximum and
    /// correction by the same instructions ([`super::avx2::new_max_and_correction`]), then
    /// `e^(s - m')` by the 16-lane twin of the 8-lane `e^x` (operation for operation), so the
    /// same bits in half the exponential's instructions.
    ///
    /// # Safety
    /// AVX-512F, AVX2, FMA and F16C; shapes as [`super::avx2::update_softmax`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn update_softmax(
        weights: &mut [f32],
        max: &mut [f32],
        sums: &mut [f32],
        correction: &mut [f32],
    ) {
        const _: () = assert!(TILE == 16, "one ZMM per row");
        let rows = max.len();
        assert!(weights.len() == rows * TILE && sums.len() == rows * TILE && correction.len() == rows);
        for r in 0..rows {
            let (w, l) = (weights.as_mut_ptr().add(r * TILE), sums.as_mut_ptr().add(r * TILE));
            let x = _mm512_loadu_ps(w);
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
            let (new_max, c) =
                super::avx2::new_max_and_correction(_mm512_castps512_ps256(x), high, &mut max[r], &mut correction[r]);
            let (new_max, c) = (_mm512_broadcastss_ps(new_max), _mm512_broadcastss_ps(c));
            let p = exp_nonpositive_x16(_mm512_sub_ps(x, new_max));
            _mm512_storeu_ps(w, p);
            _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), c, p));
        }
    }

    /// # Safety
    /// AVX-512F, AVX2, FMA and F16C; shapes as [`super::avx2::scores`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scores<E: Element>(
        queries: &[f32],
        keys: TileRows<E>,
        hd: usize,
        lanes: (usize, usize),
        scale: f32,
        out: &mut [f32],
    ) {
        let rows = queries.len() / hd;
        assert!(hd.is_multiple_of(8) && out.len() == rows * TILE && keys.first <= lanes.0 && lanes.1 <= TILE);
        // Each lane's 16 sums `p_i + p_(i+16)` of each row of the pass, reduced together below.
        // Lanes outside `lanes` are zeros (their scores are not stored); the others are written
        // by `score_block` before they are read, so the 4 KiB need no clearing per call.
        let mut halves = std::mem::MaybeUninit::<[[__m512; TILE]; ROWS_PER_PASS]>::uninit();
        let h = halves.as_mut_ptr() as *mut __m512;
        for j in (0..lanes.0).chain(lanes.1..TILE) {
            for r in 0..ROWS_PER_PASS {
                h.add(r * TILE + j).write(_mm512_setzero_ps());
            }
        }
        let in_lanes: __mmask16 = ((1u32 << lanes.1) - (1u32 << lanes.0)) as __mmask16;
        // Up to four rows × two keys × two accumulators: 16 of the 32 registers.
        for first in (0..rows).step_by(ROWS_PER_PASS) {
            let q = queries.as_ptr().add(first * hd);
            let mut j = lanes.0;
            while j < lanes.1 {
                let k = keys.row(j, hd);
                let two = j + 1 < lanes.1;
                match (rows - first, two) {
                    (1, true) => score_block::<E, 1, 2>(q, k, hd, h.add(j)),
                    (2, true) => score_block::<E, 2, 2>(q, k, hd, h.add(j)),
                    (3, true) => score_block::<E, 3, 2>(q, k, hd, h.add(j)),
                    (_, true) => score_block::<E, 4, 2>(q, k, hd, h.add(j)),
                    (1, false) => score_block::<E, 1, 1>(q, k, hd, h.add(j)),
                    (2, false) => score_block::<E, 2, 1>(q, k, hd, h.add(j)),
                    (3, false) => score_block::<E, 3, 1>(q, k, hd, h.add(j)),
                    (_, false) => score_block::<E, 4, 1>(q, k, hd, h.add(j)),
                }
                j += if two { 2 } else { 1 };
            }
            for r in 0..(rows - first).min(ROWS_PER_PASS) {
                // SAFETY: row r's lanes are all written (above, or by this pass's blocks).
                let row = &*(h.add(r * TILE) as *const [__m512; TILE]);
                let scores = _mm512_mul_ps(lane_trees(row), _mm512_set1_ps(scale));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add((first + r) * TILE), in_lanes, scores);
            }
        }
    }

    /// The score tree's last four levels for sixteen lanes at once: lane `j` of the result is
    /// `tree(h[j])`, where `tree(x)` sums `e_i = x_i + x_(i+8)`, then `e_i + e_(i+4)`, then
    /// `+2`, then `+1` (the contract's order, as [`super::avx2::horizontal_sum`] does it for
    /// one lane). Each level adds pairs of vectors shuffled so that both lanes' partial sums
    /// travel together: 45 shuffles and adds for sixteen scores instead of about 9 per score.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn lane_trees(h: &[__m512; TILE]) -> __m512 {
        // Level `+8`: t[k] holds lanes 2k (in its low 8 floats) and 2k + 1 (high 8).
        let mut t = [_mm512_setzero_ps(); 8];
        for (k, t) in t.iter_mut().enumerate() {
            let (a, b) = (h[2 * k], h[2 * k + 1]);
            *t = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
        }
        // Level `+4`: u[m]'s 128-bit chunk c holds lane 4m + c.
        let mut u = [_mm512_setzero_ps(); 4];
        for (m, u) in u.iter_mut().enumerate() {
            let (x, y) = (t[2 * m], t[2 * m + 1]);
            *u = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y));
        }
        // Level `+2`: v[n]'s chunk c holds lane 8n + c (floats 0, 1) and 8n + 4 + c (2, 3).
        let mut v = [_mm512_setzero_ps(); 2];
        for (n, v) in v.iter_mut().enumerate() {
            let (x, y) = (u[2 * n], u[2 * n + 1]);
            *v = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(x, y), _mm512_shuffle_ps::<0xEE>(x, y));
        }
        // Level `+1`: float 4c + k holds lane 4k + c; put lane j at float j.
        let w = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(v[0], v[1]), _mm512_shuffle_ps::<0xDD>(v[0], v[1]));
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, w)
    }

    /// `R` query rows against `P` consecutive keys; writes key `p`'s sums `p_i + p_(i+16)` of
    /// row `r` to `halves[r * TILE + p]`. Partial sums `0..16` live in the first accumulator,
    /// `16..32` in the second.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn score_block<E: Element, const R: usize, const P: usize>(
        q: *const f32,
        k: *const E,
        hd: usize,
        halves: *mut __m512,
    ) {
        let mut acc = [[[_mm512_setzero_ps(); 2]; P]; R];
        let full = hd / 32 * 32;
        for d in (0..full).step_by(32) {
            let mut key = [[_mm512_setzero_ps(); 2]; P];
            for (p, key) in key.iter_mut().enumerate() {
                key[0] = E::load(k.add(p * hd + d), 0xffff);
                key[1] = E::load(k.add(p * hd + d + 16), 0xffff);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let q0 = _mm512_loadu_ps(q.add(r * hd + d));
                let q1 = _mm512_loadu_ps(q.add(r * hd + d + 16));
                for (acc, key) in acc.iter_mut().zip(&key) {
                    acc[0] = _mm512_fmadd_ps(q0, key[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(q1, key[1], acc[1]);
                }
            }
        }
        // A tail of 8, 16 or 24 dims: partial sums 0..8, 0..16, or 0..16 and 16..24.
        let mut d = full;
        while d < hd {
            let slot = (d - full) / 16;
            let mask: __mmask16 = if hd - d >= 16 { 0xffff } else { 0x00ff };
            for (r, acc) in acc.iter_mut().enumerate() {
                let qv = _mm512_maskz_loadu_ps(mask, q.add(r * hd + d));
                for (p, acc) in acc.iter_mut().enumerate() {
                    let kv = E::load(k.add(p * hd + d), mask);
                    acc[slot] = _mm512_mask3_fmadd_ps(qv, kv, acc[slot], mask);
                }
            }
            d += 16;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, acc) in acc.iter().enumerate() {
                *halves.add(r * TILE + p) = _mm512_add_ps(acc[0], acc[1]);
            }
        }
    }

    /// # Safety
    /// AVX-512F, AVX2, FMA and F16C; shapes as [`super::avx2::accumulate`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn accumulate<E: Element>(
        values: TileRows<E>,
        weights: &[f32],
        correction: &[f32],
        lanes: (usize, usize),
        acc: &mut [f32],
    ) {
        let rows = correction.len();
        let hd = acc.len() / rows;
        assert!(hd.is_multiple_of(8) && acc.len() == rows * hd && weights.len() == rows * TILE);
        assert!(values.first <= lanes.0 && lanes.1 <= TILE);
        for first in (0..rows).step_by(ROWS_PER_PASS) {
            let pass = Pass {
                values,
                weights: weights.as_ptr().add(first * TILE),
                correction: correction.as_ptr().add(first),
                acc: acc.as_mut_ptr().add(first * hd),
                hd,
                lanes,
            };
            let mut d = 0;
            while d < hd {
                let rest = hd - d;
                let (width, mask): (usize, __mmask16) = match rest {
                    64.. => (4, 0xffff),
                    16.. => (1, 0xffff),
                    _ => (1, 0x00ff),
                };
                match (rows - first, width) {
                    (1, 4) => pass.dims::<1, 4>(d, mask),
                    (2, 4) => pass.dims::<2, 4>(d, mask),
                    (3, 4) => pass.dims::<3, 4>(d, mask),
                    (_, 4) => pass.dims::<4, 4>(d, mask),
                    (1, _) => pass.dims::<1, 1>(d, mask),
                    (2, _) => pass.dims::<2, 1>(d, mask),
                    (3, _) => pass.dims::<3, 1>(d, mask),
                    (_, _) => pass.dims::<4, 1>(d, mask),
                }
                d += (16 * width).min(rest);
            }
        }
    }

    /// A few query rows' accumulators over one tile.
    struct Pass<E> {
        values: TileRows<E>,
        weights: *const f32,
        correction: *const f32,
        acc: *mut f32,
        hd: usize,
        lanes: (usize, usize),
    }

    impl<E: Element> Pass<E> {
        /// `R` rows × `W` vectors of 16 dims from `d` (the last vector's lanes in `mask`), in
        /// registers while the positions go by.
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        #[inline]
        unsafe fn dims<const R: usize, const W: usize>(&self, d: usize, mask: __mmask16) {
            let lane_mask = |w: usize| if w + 1 == W { mask } else { 0xffff };
            let mut acc = [[_mm512_setzero_ps(); W]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                let c = _mm512_set1_ps(*self.correction.add(r));
                for (w, a) in acc.iter_mut().enumerate() {
                    let at = self.acc.add(r * self.hd + d + 16 * w);
                    *a = _mm512_mul_ps(_mm512_maskz_loadu_ps(lane_mask(w), at), c);
                }
            }
            for j in self.lanes.0..self.lanes.1 {
                let row = self.values.row(j, self.hd).add(d);
                let mut v = [_mm512_setzero_ps(); W];
                for (w, v) in v.iter_mut().enumerate() {
                    *v = E::load(row.add(16 * w), lane_mask(w));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p = _mm512_set1_ps(*self.weights.add(r * TILE + j));
                    for (a, &v) in acc.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(p, v, *a);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (w, &a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(self.acc.add(r * self.hd + d + 16 * w), lane_mask(w), a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::attention_split::SLICE;

    const CACHE_TYPES: [KvCacheType; 2] = [KvCacheType::F16, KvCacheType::Q8_0];

    /// Pseudo-random values in [-2, 2).
    fn random_values(seed: u32) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        }
    }

    /// One sequence's K/V for `n` positions (and the rest of its last block) in a storage of
    /// 2 layers with scattered blocks of `block_size` (not a multiple of the tile, so tiles
    /// straddle blocks), stored as `cache_type`.
    fn storage(cache_type: KvCacheType, n: usize, g: &Geometry, block_size: usize, seed: u32) -> (KvStorage, Vec<u32>) {
        let blocks = n.div_ceil(block_size);
        let mut kv = KvStorage::new(2, blocks * 3, block_size, g.n_kv_heads, g.head_dim).with_cache_type(cache_type);
        // Blocks out of order and spread, like a real allocator's.
        let table: Vec<u32> = (0..blocks as u32).map(|b| (b * 7 + 2) % (blocks as u32 * 3)).collect();
        let mut random = random_values(seed);
        for layer in 0..2 {
            for pos in 0..blocks * block_size {
                let key: Vec<f32> = (0..g.kv_dim()).map(|_| random()).collect();
                let value: Vec<f32> = (0..g.kv_dim()).map(|_| random()).collect();
                kv.write(layer, &table, pos, &key, &value);
            }
        }
        (kv, table)
    }

    /// `q` as the q8_0 attention uses it: quantized in blocks of 32 and read back.
    fn as_quantized(q: &[f32]) -> Vec<f64> {
        let mut out = Vec::new();
        for run in q.chunks(Q8_GROUP) {
            let mut padded = [0f32; Q8_GROUP];
            padded[..run.len()].copy_from_slice(run);
            let mut block = [Q8Block::default()];
            crate::quant::quantize_row(&padded, &mut block);
            out.extend(block[0].q[..run.len()].iter().map(|&x| x as f64 * block[0].d as f64));
        }
        out
    }

    fn geometry(head_dim: usize, n_heads: usize, n_kv_heads: usize) -> Geometry {
        let qkv_row_len = (n_heads + 2 * n_kv_heads) * head_dim;
        Geometry { n_heads, n_kv_heads, head_dim, qkv_row_len, scale: 1.0 / (head_dim as f32).sqrt() }
    }

    /// Float64 attention of query head `head` of `q_row` over `positions`.
    fn reference(
        kv: &KvStorage,
        table: &[u32],
        g: &Geometry,
        head: usize,
        q_row: &[f32],
        positions: std::ops::Range<usize>,
    ) -> Vec<f64> {
        let (hd, layer, kv_head) = (g.head_dim, 1, head / g.group());
        let q = &q_row[head * hd..][..hd];
        // With a q8_0 cache the kernels quantize the query too (the error of that is the
        // model-level tests' business); here only their arithmetic is checked.
        let q: Vec<f64> = match kv.cache_type() {
            KvCacheType::F16 => q.iter().map(|&x| x as f64).collect(),
            KvCacheType::Q8_0 => as_quantized(q),
        };
        let at = |p: usize| kv.position_offset(layer, table, p, kv_head);
        let key = |p: usize| kv.keys(layer).row_f32(at(p), hd);
        let value = |p: usize| kv.values(layer).row_f32(at(p), hd);
        let scores: Vec<f64> = positions
            .clone()
            .map(|p| q.iter().zip(&key(p)).map(|(&a, &b)| a * b as f64).sum::<f64>() * g.scale as f64)
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = e.iter().sum();
        let values: Vec<Vec<f32>> = positions.clone().map(value).collect();
        (0..hd).map(|d| values.iter().zip(&e).map(|(v, e)| e / total * v[d] as f64).sum()).collect()
    }

    /// Runs `attend_with` for one sequence's chunks (each `(start_pos, n_tokens)`), all in one
    /// step, and returns the output rows in step order.
    #[allow(clippy::too_many_arguments)]
    fn run(
        kernel: Kernel,
        g: &Geometry,
        span: Span,
        kv: &KvStorage,
        table: &[u32],
        chunks: &[(usize, usize)],
        qkv: &[f32],
        pool: &ThreadPool,
    ) -> Vec<f32> {
        run_with(kernel, false, g, span, kv, table, chunks, qkv, pool)
    }

    /// [`run`] with long decode rows spread over slice tasks or not.
    #[allow(clippy::too_many_arguments)]
    fn run_with(
        kernel: Kernel,
        spread: bool,
        g: &Geometry,
        span: Span,
        kv: &KvStorage,
        table: &[u32],
        chunks: &[(usize, usize)],
        qkv: &[f32],
        pool: &ThreadPool,
    ) -> Vec<f32> {
        let tokens = vec![0u32; chunks.iter().map(|c| c.1).sum()];
        let seq_chunks: Vec<SeqChunk<'_>> = chunks
            .iter()
            .map(|&(start_pos, n)| SeqChunk {
                tokens: &tokens[..n],
                start_pos,
                block_table: table,
                sliding_block_table: table,
                want_logits: false,
            })
            .collect();
        let mut scratch = AttentionScratch::default();
        let mut out = vec![f32::NAN; tokens.len() * g.q_dim()];
        // The output quantized by the tasks (where the head dimension allows) must be the
        // output rows quantized whole, in every case every test here runs.
        let blocks_per_row = quantized_output_blocks(g);
        let stale = Q8Block { d: f32::NAN, sum: i32::MIN, q: [i8::MIN; 32], ..Q8Block::default() };
        let mut quantized = vec![stale; tokens.len() * blocks_per_row];
        let quantized_out = (blocks_per_row > 0).then_some(&mut quantized[..]);
        attend_with(kernel, spread, &mut scratch, g, 1, span, &seq_chunks, kv, qkv, &mut out, quantized_out, pool);
        let mut expected = vec![Q8Block::default(); quantized.len()];
        if blocks_per_row > 0 {
            for (row, blocks) in out.chunks_exact(g.q_dim()).zip(expected.chunks_exact_mut(blocks_per_row)) {
                crate::quant::quantize_row(row, blocks);
            }
        }
        let first_differing = quantized.iter().zip(&expected).position(|(a, b)| !a.same_bits(b));
        assert_eq!(first_differing, None, "quantized output ({kernel:?}, spread {spread}, head_dim {})", g.head_dim);
        out
    }

    /// Query rows for the positions of `chunks` (row `i` of the step: the queries of the
    /// token at that position, the same for the same position in any chunking).
    fn queries_for(g: &Geometry, chunks: &[(usize, usize)], seed: u32) -> Vec<f32> {
        let mut qkv = Vec::new();
        for &(start, n) in chunks {
            for pos in start..start + n {
                let mut random = random_values(seed ^ (pos as u32).wrapping_mul(2_654_435_761));
                qkv.extend((0..g.qkv_row_len).map(|_| random()));
            }
        }
        qkv
    }

    /// Head dims, (heads, KV heads), spans and context lengths that cover the tails of every
    /// kernel: dims not a multiple of 32 or 16, groups of 1 to 5 rows, windows that start
    /// mid-tile, contexts shorter and longer than a tile.
    fn cases() -> Vec<(Geometry, Span, usize)> {
        let mut cases = Vec::new();
        for (hd, heads, kv_heads) in
            [(64, 9, 3), (8, 1, 1), (16, 4, 2), (24, 2, 1), (40, 5, 1), (256, 4, 1), (48, 8, 2)]
        {
            for (span, n) in [
                (Span::Causal, 1),
                (Span::Causal, 7),
                (Span::Causal, 45),
                (Span::Window(6), 23),
                (Span::Window(17), 50),
            ] {
                cases.push((geometry(hd, heads, kv_heads), span, n));
            }
        }
        cases
    }

    #[test]
    fn every_kernel_matches_a_float64_reference() {
        let pool = ThreadPool::new(2).unwrap();
        for ((g, span, n), cache_type) in cases().into_iter().flat_map(|c| CACHE_TYPES.map(|t| (c, t))) {
            let (kv, table) = storage(cache_type, n, &g, 5, n as u32 + g.head_dim as u32);
            // The prompt in one chunk from position 0, then the last token as a decode.
            let chunks = [(0, n)];
            // Queries of two sizes: scores near each other, and scores ten times further apart
            // (a peaked softmax whose running maximum jumps between tiles).
            for magnitude in [1.0, 10.0] {
                let qkv: Vec<f32> = queries_for(&g, &chunks, 7).iter().map(|q| q * magnitude).collect();
                for kernel in Kernel::available(g.head_dim) {
                    let out = run(kernel, &g, span, &kv, &table, &chunks, &qkv, &pool);
                    for pos in 0..n {
                        for head in 0..g.n_heads {
                            let q_row = &qkv[pos * g.qkv_row_len..][..g.qkv_row_len];
                            let want = reference(&kv, &table, &g, head, q_row, span.first(pos)..pos + 1);
                            let got = &out[pos * g.q_dim() + head * g.head_dim..][..g.head_dim];
                            for (d, (&got, &want)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                (got as f64 - want).abs() < 1e-4,
                                "{kernel:?} {cache_type} {g:?} {span:?} x{magnitude} pos {pos} head {head} dim {d}: {got} vs {want}"
                            );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_simd_kernel_gives_the_portable_bits() {
        let pool = ThreadPool::new(2).unwrap();
        for ((g, span, n), cache_type) in cases().into_iter().flat_map(|c| CACHE_TYPES.map(|t| (c, t))) {
            let (kv, table) = storage(cache_type, n, &g, 5, 3 * n as u32 + g.head_dim as u32);
            let chunks = [(0, n)];
            let qkv = queries_for(&g, &chunks, 11);
            let portable = run(Kernel::Portable, &g, span, &kv, &table, &chunks, &qkv, &pool);
            for kernel in Kernel::available(g.head_dim).into_iter().skip(1) {
                let out = run(kernel, &g, span, &kv, &table, &chunks, &qkv, &pool);
                let differ = out.iter().zip(&portable).position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(differ, None, "{kernel:?} {cache_type} {g:?} {span:?} n {n}: first differing float");
            }
        }
    }

    /// Batch invariance: a token's result is the same bits whether its position is prefilled
    /// in one chunk, in chunks cut anywhere, or decoded alone, and whatever shares the step.
    #[test]
    fn a_token_gets_the_same_bits_however_its_prompt_is_chunked() {
        let pool = ThreadPool::new(2).unwrap();
        let n = 53;
        for (g, span) in [
            (geometry(256, 4, 1), Span::Causal),
            (geometry(64, 9, 3), Span::Window(20)),
            (geometry(40, 2, 2), Span::Causal),
        ] {
            for cache_type in CACHE_TYPES {
                let (kv, table) = storage(cache_type, n, &g, 16, 99);
                for kernel in Kernel::available(g.head_dim) {
                    let whole = [(0, n)];
                    let reference = run(kernel, &g, span, &kv, &table, &whole, &queries_for(&g, &whole, 5), &pool);
                    let splits: [&[(usize, usize)]; 3] = [
                        &[(0, 13), (13, 1), (14, 20), (34, 19)],
                        &[(40, 13), (0, 3), (3, 37)],
                        &[(52, 1), (51, 1), (0, 17), (17, 17), (34, 17)],
                    ];
                    for chunks in splits {
                        let out = run(kernel, &g, span, &kv, &table, chunks, &queries_for(&g, chunks, 5), &pool);
                        let mut row = 0;
                        for &(start, len) in chunks {
                            for pos in start..start + len {
                                let got = &out[row * g.q_dim()..][..g.q_dim()];
                                let want = &reference[pos * g.q_dim()..][..g.q_dim()];
                                assert!(
                                    got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "{kernel:?} {cache_type} {g:?} {span:?} chunks {chunks:?}: position {pos} differs"
                                );
                                row += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The SIMD softmax step skips `e^(m - m')` when the maximum stays: that is sound only
    /// while the polynomial gives exactly 1 at 0 (on both paths).
    #[test]
    fn the_exponential_of_zero_is_exactly_one() {
        for zero in [0.0f32, -0.0] {
            assert_eq!(crate::models::elementwise::exp_nonpositive(zero).to_bits(), 1f32.to_bits());
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::has_avx2_fma_f16c() {
                // SAFETY: the CPU has AVX2 and FMA.
                let one = unsafe {
                    use std::arch::x86_64::*;
                    _mm256_cvtss_f32(crate::models::elementwise::simd::exp_nonpositive(_mm256_set1_ps(zero)))
                };
                assert_eq!(one.to_bits(), 1f32.to_bits());
            }
        }
    }

    /// A decode row's tile is read in place only as one block's run of f16 rows (a tile that
    /// straddles blocks, or a q8_0 cache, is widened), and the run holds exactly the rows of
    /// the positions asked for.
    #[test]
    fn a_decode_tile_is_read_in_place_only_within_one_f16_block() {
        let g = geometry(16, 2, 1);
        for (cache_type, block_size) in [(KvCacheType::F16, 16), (KvCacheType::F16, 5), (KvCacheType::Q8_0, 16)] {
            let (kv, table) = storage(cache_type, 40, &g, block_size, 4);
            let view = KvHeadView::new(&kv, 1, &table, 0, g.head_dim);
            let in_place = |positions| view.f16_run(positions).is_some();
            assert_eq!(
                in_place((16, 32)),
                cache_type == KvCacheType::F16 && block_size == 16,
                "{cache_type} {block_size}"
            );
            assert_eq!(in_place((16, 20)), cache_type == KvCacheType::F16, "{cache_type} {block_size}");
            assert!(!in_place((3, 3)));
            if let Some((k, v)) = view.f16_run((17, 20)) {
                let row = |rows: RowsView<'_>, p| rows.row_f32(kv.position_offset(1, &table, p, 0), g.head_dim);
                for (i, p) in (17..20).enumerate() {
                    let widened =
                        |bits: &[u16]| bits[i * 16..][..16].iter().map(|&x| f16_to_f32(x)).collect::<Vec<_>>();
                    assert_eq!(widened(k), row(kv.keys(1), p));
                    assert_eq!(widened(v), row(kv.values(1), p));
                }
            }
        }
    }

    #[test]
    fn sliding_window_reads_only_the_last_positions() {
        assert_eq!(Span::Window(8).first(3), 0);
        assert_eq!(Span::Window(8).first(7), 0);
        assert_eq!(Span::Window(8).first(8), 1);
        assert_eq!(Span::Causal.first(100), 0);
    }

    /// Positions before the window may sit in blocks given back to the pool (the table entry
    /// then points nowhere valid): attention must not touch them.
    #[test]
    fn a_window_never_reads_blocks_before_it() {
        let pool = ThreadPool::new(1).unwrap();
        let g = geometry(16, 2, 1);
        let (n, window, block_size) = (40, 7, 4);
        for cache_type in CACHE_TYPES {
            let (kv, mut table) = storage(cache_type, n, &g, block_size, 1);
            let chunks = [(30, 10)];
            let qkv = queries_for(&g, &chunks, 3);
            // Position 30's window starts at 24 (block 6): blocks 0..6 are released.
            table[..6].fill(u32::MAX);
            for kernel in Kernel::available(g.head_dim) {
                let out = run(kernel, &g, Span::Window(window), &kv, &table, &chunks, &qkv, &pool);
                assert!(out.iter().all(|x| x.is_finite()), "{kernel:?} {cache_type}");
            }
        }
    }

    /// Long contexts (several slices) for the long-context tests: a grouped head layout and a
    /// single-KV-head one, global and windowed (a window that starts mid-slice), each over an
    /// f16 and a q8_0 cache (a q8_0 slice task quantizes its own query rows and keys).
    fn long_cases() -> Vec<(Geometry, Span, usize, KvCacheType)> {
        let cases = [
            (geometry(64, 9, 3), Span::Causal, 2100),
            (geometry(256, 4, 1), Span::Causal, 2 * SLICE + 37),
            (geometry(64, 9, 3), Span::Window(700), 2100),
        ];
        cases.into_iter().flat_map(|(g, span, n)| CACHE_TYPES.map(|t| (g, span, n, t))).collect()
    }

    /// A long prompt's last 19 tokens prefilled (slices folded in one task) beside the last
    /// position decoded (spread over slice tasks or not) match a float64 softmax, on every kernel.
    #[test]
    fn long_contexts_match_a_float64_reference_spread_or_not() {
        let pool = ThreadPool::new(2).unwrap();
        for (g, span, n, cache_type) in long_cases() {
            let (kv, table) = storage(cache_type, n, &g, 16, n as u32);
            let chunks = [(n - 20, 19), (n - 1, 1)];
            for magnitude in [1.0, 10.0] {
                let qkv: Vec<f32> = queries_for(&g, &chunks, 13).iter().map(|q| q * magnitude).collect();
                for kernel in Kernel::available(g.head_dim) {
                    for spread in [false, true] {
                        let out = run_with(kernel, spread, &g, span, &kv, &table, &chunks, &qkv, &pool);
                        for (row, pos) in (n - 20..n).enumerate() {
                            for head in 0..g.n_heads {
                                let q_row = &qkv[row * g.qkv_row_len..][..g.qkv_row_len];
                                let want = reference(&kv, &table, &g, head, q_row, span.first(pos)..pos + 1);
                                let got = &out[row * g.q_dim() + head * g.head_dim..][..g.head_dim];
                                let worst =
                                    got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
                                assert!(
                                    worst < 1e-4,
                                    "{kernel:?} {cache_type} spread {spread} {g:?} {span:?} x{magnitude} pos {pos} head {head}: off by {worst}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Batch invariance and ISA identity for long contexts: the last position's result is the
    /// portable kernel's bits for it decoded alone on one thread, whatever the kernel, whether
    /// its slices are spread over tasks, on pools of 1 to 3 threads, beside other rows, and when
    /// it is the last token of a prefill chunk instead of a decode.
    #[test]
    fn a_long_decode_gets_the_same_bits_spread_or_not_on_any_pool_and_batch() {
        let pools: Vec<ThreadPool> = (1..=3).map(|t| ThreadPool::new(t).unwrap()).collect();
        for (g, span, n, cache_type) in long_cases() {
            let (kv, table) = storage(cache_type, n, &g, 16, 7 * n as u32);
            let last = n - 1;
            let alone = [(last, 1)];
            let want = run_with(
                Kernel::Portable,
                false,
                &g,
                span,
                &kv,
                &table,
                &alone,
                &queries_for(&g, &alone, 21),
                &pools[0],
            );
            let batches: [&[(usize, usize)]; 3] =
                [&alone, &[(0, 40), (last, 1), (SLICE, 1), (n - 18, 16)], &[(n - 17, 17)]];
            for kernel in Kernel::available(g.head_dim) {
                for spread in [false, true] {
                    for (threads, pool) in pools.iter().enumerate() {
                        for chunks in batches {
                            let out = run_with(
                                kernel,
                                spread,
                                &g,
                                span,
                                &kv,
                                &table,
                                chunks,
                                &queries_for(&g, chunks, 21),
                                pool,
                            );
                            let mut row = 0;
                            for &(start, len) in chunks {
                                if (start..start + len).contains(&last) {
                                    let got = &out[(row + last - start) * g.q_dim()..][..g.q_dim()];
                                    let differ = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
                                    assert_eq!(
                                        differ,
                                        None,
                                        "{kernel:?} {cache_type} spread {spread} {} threads {g:?} {span:?} chunks {chunks:?}",
                                        threads + 1
                                    );
                                }
                                row += len;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The production policy spreads a lone long decode over slice tasks (so the tests above
    /// exercise the path the engine takes) and leaves short or crowded steps alone.
    #[test]
    fn a_lone_long_decode_is_spread_over_slices() {
        let g = geometry(64, 9, 3);
        let tokens = [0u32];
        let chunk = |start_pos| SeqChunk {
            tokens: &tokens,
            start_pos,
            block_table: &[],
            sliding_block_table: &[],
            want_logits: true,
        };
        let mut scratch = AttentionScratch::default();
        let long = [chunk(2100)];
        let spread = attention_split::spread_slices(AttentionScratch::unsplit_tasks(&long, &g), 2);
        scratch.plan(&long, &g, Span::Causal, spread);
        assert_eq!((scratch.tasks.len(), scratch.merges.len()), (3 * 5, 3));
        let short = [chunk(SLICE - 1)];
        scratch.plan(&short, &g, Span::Causal, true);
        assert_eq!((scratch.tasks.len(), scratch.merges.len()), (3, 0));
        let crowded: Vec<_> = (0..3).map(|_| chunk(2100)).collect();
        assert!(!attention_split::spread_slices(AttentionScratch::unsplit_tasks(&crowded, &g), 2));
    }

    /// CPU time of one decode step's attention over every layer for many short streams whose
    /// K/V come from memory, as the engine's 32-stream decode runs it: `cargo test --release
    /// -p cortexstream --lib attention_batch_probe -- --ignored --nocapture`; `PROBE_STREAMS`
    /// (default 32), `PROBE_CONTEXT` (the longest stream's context, default 145; the others
    /// spread down to a tenth of it), `PROBE_THREADS` (default 1: the caller's thread time is
    /// all of it), `PROBE_KERNEL` as in [`attention_speed_probe`]. A measuring aid for A/B
    /// runs, not a test.
    #[test]
    #[ignore]
    fn attention_batch_probe() {
        let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let (streams, context, threads) =
            (env("PROBE_STREAMS", 32), env("PROBE_CONTEXT", 145), env("PROBE_THREADS", 1));
        let (g, layers, block_size) = (geometry(64, 9, 3), 30, 16);
        let blocks_per_stream = (context + 1).div_ceil(block_size);
        let total_blocks = streams * blocks_per_stream;
        let mut kv = KvStorage::new(layers, total_blocks, block_size, g.n_kv_heads, g.head_dim);
        // Each stream's blocks spread over the pool, like an allocator's after some traffic.
        let tables: Vec<Vec<u32>> = (0..streams)
            .map(|s| (0..blocks_per_stream).map(|b| ((b * streams + s) * 7919 % total_blocks) as u32).collect())
            .collect();
        let contexts: Vec<usize> =
            (0..streams).map(|s| context - s * (context - context / 10) / streams.max(1)).collect();
        let mut random = random_values(17);
        let row: Vec<f32> = (0..g.kv_dim()).map(|_| random()).collect();
        for layer in 0..layers {
            for (table, &n) in tables.iter().zip(&contexts) {
                for pos in 0..=n {
                    kv.write(layer, table, pos, &row, &row);
                }
            }
        }
        let tokens = vec![0u32; streams];
        let chunks: Vec<SeqChunk<'_>> = tables
            .iter()
            .zip(&contexts)
            .enumerate()
            .map(|(s, (table, &n))| SeqChunk {
                tokens: &tokens[s..s + 1],
                start_pos: n,
                block_table: table,
                sliding_block_table: table,
                want_logits: true,
            })
            .collect();
        let qkv: Vec<f32> = (0..streams * g.qkv_row_len).map(|_| random()).collect();
        let pool = ThreadPool::new(threads).unwrap();
        let mut scratch = AttentionScratch::default();
        let mut out = vec![0f32; streams * g.q_dim()];
        let mut times = Vec::new();
        let kernel = probe_kernel(g.head_dim);
        let spread = attention_split::spread_slices(AttentionScratch::unsplit_tasks(&chunks, &g), threads);
        for _ in 0..40 {
            let before = process_cpu_ns();
            for layer in 0..layers {
                attend_with(kernel, spread, &mut scratch, &g, layer, Span::Causal, &chunks, &kv, &qkv, &mut out, None, &pool);
            }
            times.push(process_cpu_ns() - before);
        }
        times.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        println!(
            "{streams} streams, contexts {}..{context}, {threads} threads: median {:.3} ms, best {:.3} ms a step",
            contexts.last().unwrap_or(&0),
            ms(times[times.len() / 2]),
            ms(times[0])
        );
    }

    fn process_cpu_ns() -> u64 {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    /// The kernel `PROBE_KERNEL` names (`portable`, `avx2`, `avx512`), else the best.
    fn probe_kernel(head_dim: usize) -> Kernel {
        let wanted = std::env::var("PROBE_KERNEL").unwrap_or_default().to_lowercase();
        let available = Kernel::available(head_dim);
        available
            .into_iter()
            .rev()
            .find(|k| format!("{k:?}").to_lowercase() == wanted)
            .unwrap_or(Kernel::best(head_dim))
    }

    /// CPU time of one attention call (this thread's clock; the one-thread pool runs tasks on
    /// the caller), best of several: `cargo test --release -p cortexstream --lib
    /// attention_speed_probe -- --ignored --nocapture`; `PROBE=text` runs the rows whose name
    /// contains it, `PROBE_KERNEL=avx2` forces a kernel. A measuring aid for A/B runs, not a test.
    #[test]
    #[ignore]
    fn attention_speed_probe() {
        fn thread_cpu_ns() -> u64 {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid timespec for the call to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
            now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
        }
        let pool = ThreadPool::new(1).unwrap();
        let smollm2 = geometry(64, 9, 3);
        let gemma3 = geometry(256, 4, 1);
        let cases: [(&str, Geometry, Span, usize, usize); 7] = [
            ("smollm2 decode at 128", smollm2, Span::Causal, 128, 1),
            ("smollm2 decode at 2048", smollm2, Span::Causal, 2048, 1),
            ("smollm2 decode at 8000", smollm2, Span::Causal, 8000, 1),
            ("smollm2 prefill 64 at 4032", smollm2, Span::Causal, 4032, 64),
            ("smollm2 prefill 256 at 3840", smollm2, Span::Causal, 3840, 256),
            ("gemma3 prefill 512 global", gemma3, Span::Causal, 0, 512),
            ("gemma3 prefill 512 window", gemma3, Span::Window(512), 0, 512),
        ];
        let filter = std::env::var("PROBE").unwrap_or_default();
        for (name, g, span, start, n) in cases {
            if !name.contains(filter.as_str()) {
                continue;
            }
            let (kv, table) = storage(KvCacheType::F16, start + n, &g, 16, 5);
            let chunks = [(start, n)];
            let qkv = queries_for(&g, &chunks, 3);
            let kernel = probe_kernel(g.head_dim);
            let mut best = u64::MAX;
            let repeats = (2_000_000 / (n * (start + n))).clamp(3, 200);
            for _ in 0..repeats {
                let before = thread_cpu_ns();
                std::hint::black_box(run(kernel, &g, span, &kv, &table, &chunks, &qkv, &pool));
                best = best.min(thread_cpu_ns() - before);
            }
            println!("{name:<30} {kernel:?} {:>10.1} us", best as f64 / 1000.0);
        }
        // As the engine decodes: each call reads another layer's K/V, so the rows come from
        // memory rather than the last level cache (6 layers of 6 MB each).
        if "smollm2 decode at 8000 from memory".contains(filter.as_str()) {
            let (g, pos) = (smollm2, 8000);
            let layers: Vec<_> = (0..6).map(|l| storage(KvCacheType::F16, pos + 1, &g, 16, 5 + l)).collect();
            let chunks = [(pos, 1)];
            let qkv = queries_for(&g, &chunks, 3);
            let kernel = probe_kernel(g.head_dim);
            let mut best = u64::MAX;
            for _ in 0..30 {
                let before = thread_cpu_ns();
                for (kv, table) in &layers {
                    std::hint::black_box(run(kernel, &g, Span::Causal, kv, table, &chunks, &qkv, &pool));
                }
                best = best.min((thread_cpu_ns() - before) / layers.len() as u64);
            }
            println!("{:<30} {kernel:?} {:>10.1} us", "smollm2 decode 8000 memory", best as f64 / 1000.0);
        }
    }
}
