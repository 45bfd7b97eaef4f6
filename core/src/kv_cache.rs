//! Paged KV cache: the storage the model reads and writes ([`KvStorage`]), in f16 or 8-bit
//! ([`KvCacheType`]). The block allocator with ref-counted prefix sharing that the scheduler
//! drives ([`BlockAllocator`]) lives beside the scheduler (`engine::block_allocator`); its
//! public names stay here too.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::f16::{f16_to_f32, f32_to_f16};

pub use crate::engine::block_allocator::{
    block_hash, prefix_contents, BlockAllocator, BlockHash, BlockTable, CachedContents, OutOfBlocks, RELEASED_BLOCK,
};

/// Values per scale of the 8-bit format (ggml's Q8_0 block).
pub const Q8_GROUP: usize = 32;

/// How K and V are stored ([`EngineConfig::kv_cache_type`](crate::EngineConfig::kv_cache_type)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// IEEE half precision (llama.cpp's default cache type).
    #[default]
    F16,
    /// ggml's `q8_0`: each run of 32 values of a head's row (the last run of a head dimension
    /// that is not a multiple of 32 is shorter) is stored as 8-bit integers `q` with one f16
    /// scale `d`, value ≈ `d · q`. Quantized as ggml's `quantize_row_q8_0_ref`:
    /// `d = max|x| / 127`, `q = round(x / d)` (halves away from zero), `d` stored as f16.
    /// Half the bytes of f16 plus 2 per 32 values (34 bytes per 32 instead of 64).
    Q8_0,
}

impl KvCacheType {
    /// The names the front doors accept, in order.
    pub const NAMES: [&'static str; 2] = ["f16", "q8_0"];

    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
        }
    }

    /// Parses a front door's `kv_cache_type` (an error naming that field otherwise).
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "f16" => Ok(KvCacheType::F16),
            "q8_0" => Ok(KvCacheType::Q8_0),
            _ => Err(Error::invalid(
                "kv_cache_type",
                format!("must be one of {}, got {text:?}", Self::NAMES.map(|n| format!("{n:?}")).join(", ")),
            )),
        }
    }

    /// Bytes one K (or V) row of one KV head takes: `head_dim` values.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvCacheType::F16 => head_dim * std::mem::size_of::<u16>(),
            KvCacheType::Q8_0 => head_dim + head_dim.div_ceil(Q8_GROUP) * std::mem::size_of::<u16>(),
        }
    }
}

impl FromStr for KvCacheType {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

/// As an engine setting: one of [`KvCacheType::NAMES`] (the error names the accepted ones).
impl<'de> serde::Deserialize<'de> for KvCacheType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(|error| match error {
            Error::InvalidRequest { message, .. } => serde::de::Error::custom(message),
            other => serde::de::Error::custom(other),
        })
    }
}

impl fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which block pool a layer's K/V live in.
///
/// Models without sliding-window layers have only the global pool. With a sliding pool,
/// sliding-window layers keep their K/V there, and a sequence's sliding blocks that lie
/// entirely before the window of every position it still has to compute are given back as it
/// advances (see [`BlockTable::release_before`]); global layers keep every position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPool {
    Global,
    Sliding,
}

/// The K (or V) rows of one pool, indexed by [`KvStorage::offset`].
enum Rows {
    /// `head_dim` f16 bits per row.
    F16(Vec<u16>),
    /// `head_dim` 8-bit values per row, and per row `head_dim.div_ceil(32)` f16 scales.
    Q8 { quants: Vec<i8>, scales: Vec<u16> },
}

impl Rows {
    /// Zero-allocated rows for `values` values of rows of `head_dim`, advised as transparent
    /// huge pages (see [`PoolBuffers`] for why, and why that costs no memory).
    fn new(cache_type: KvCacheType, values: usize, head_dim: usize) -> Self {
        match cache_type {
            KvCacheType::F16 => Rows::F16(zeroed_huge(values)),
            KvCacheType::Q8_0 => {
                let rows = values / head_dim.max(1);
                Rows::Q8 { quants: zeroed_huge(values), scales: zeroed_huge(rows * head_dim.div_ceil(Q8_GROUP)) }
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Rows::F16(bits) => std::mem::size_of_val(bits.as_slice()),
            Rows::Q8 { quants, scales } => quants.len() + std::mem::size_of_val(scales.as_slice()),
        }
    }

    fn view(&self) -> RowsView<'_> {
        match self {
            Rows::F16(bits) => RowsView::F16(bits),
            Rows::Q8 { quants, scales } => RowsView::Q8 { quants, scales },
        }
    }

    /// Stores `values` (one head's row) at `offset`.
    fn write(&mut self, offset: usize, values: &[f32]) {
        let hd = values.len();
        match self {
            Rows::F16(bits) => crate::f16::f32_slice_to_f16(values, &mut bits[offset..offset + hd]),
            Rows::Q8 { quants, scales } => {
                let groups = hd.div_ceil(Q8_GROUP);
                let scales = &mut scales[offset / hd * groups..][..groups];
                let quants = &mut quants[offset..offset + hd];
                let runs = values.chunks(Q8_GROUP).zip(quants.chunks_mut(Q8_GROUP));
                for ((values, quants), scale) in runs.zip(scales) {
                    *scale = quantize_q8_0(values, quants);
                }
            }
        }
    }
}

/// `len` zeroed values whose whole 2 MiB pages are advised `MADV_HUGEPAGE` before anything
/// touches them (a hint: without THP they are ordinary pages).
fn zeroed_huge<T: Copy + Default>(len: usize) -> Vec<T> {
    let buffer = vec![T::default(); len];
    crate::memory::advise_huge_pages(&buffer);
    buffer
}

/// Quantizes one run of at most 32 values as ggml's `quantize_row_q8_0_ref` does, returning
/// the f16 bits of its scale. A run whose inverse scale is not finite (all zeros, or a largest
/// magnitude below ~3.7e-37, whose f16 scale is 0 anyway) stores zeros: an infinite inverse
/// would turn its values into saturated garbage.
pub fn quantize_q8_0(values: &[f32], quants: &mut [i8]) -> u16 {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let inverse = if inverse.is_finite() { inverse } else { 0.0 };
    for (q, &x) in quants.iter_mut().zip(values) {
        // |x · inverse| <= 127 up to rounding, which cannot leave [-127, 127]: the integer
        // dot products rely on never seeing -128.
        *q = (x * inverse).round() as i8;
    }
    f32_to_f16(d)
}

/// Read access to one pool's K (or V) rows.
#[derive(Clone, Copy)]
pub enum RowsView<'a> {
    F16(&'a [u16]),
    /// Row at offset `o` (of a `head_dim` row): `quants[o..o + head_dim]`, scales
    /// `scales[o / head_dim * groups..][..groups]` with `groups = head_dim.div_ceil(32)`.
    Q8 {
        quants: &'a [i8],
        scales: &'a [u16],
    },
}

impl RowsView<'_> {
    /// The row of `head_dim` values at `offset`, widened (exact for f16; `d · q` for q8_0).
    pub fn row_f32(&self, offset: usize, head_dim: usize) -> Vec<f32> {
        match *self {
            RowsView::F16(bits) => bits[offset..offset + head_dim].iter().map(|&b| f16_to_f32(b)).collect(),
            RowsView::Q8 { quants, scales } => {
                let groups = head_dim.div_ceil(Q8_GROUP);
                let scales = &scales[offset / head_dim * groups..][..groups];
                let quants = &quants[offset..offset + head_dim];
                quants.iter().enumerate().map(|(i, &q)| q as f32 * f16_to_f32(scales[i / Q8_GROUP])).collect()
            }
        }
    }
}

/// K and V of the layers of one pool: `[block][layer of the pool][kv_head][slot][head_dim]`.
///
/// Block-major, so that the memory a sequence uses grows with its blocks: the allocator hands
/// out blocks from 0 up (returned ones first), and a block's rows of every layer lie together.
/// That is what lets the buffers be transparent huge pages: at 8000 positions a SmolLM2 decode
/// step reads 184 MB of K/V, and on 4 KiB pages every 4 KiB is a TLB miss and a page walk.
/// Layer-major (`[layer][block]…`), a sequence's first block touched one 2 MiB page per layer
/// and buffer: ~120 MB resident for a short prompt (30 layers, K and V). Block-major, a
/// touched huge page holds the next blocks of every layer (11 SmolLM2 blocks of 16 positions
/// per 2 MiB of f16 K), so resident memory exceeds the blocks used by at most one huge page
/// per buffer. Measured (Zen 4 VM, THP `madvise`, a loaded machine; process CPU time per
/// decoded token at position 8000, SmolLM2 Q4_1, `examples/long_decode_driver.rs`, old and new
/// binaries alternated, best of 2 each): f16 one thread 40.8/43.0/42.3/38.5 -> 39.5/37.9/38.9/
/// 39.2 ms (-5% on average, the last, quietest pair +2%), two threads 57.2/61.1 -> 55.4/60.0;
/// q8_0 one thread 49.8/44.6/46.5 -> 44.0/41.9/43.5 (with its scales prefetched by attention;
/// without, block-major was 3-9% slower); peak RSS of a short request with the default
/// 16384-token cache unchanged (134 MB). Attention stays compute- and latency-bound (scores,
/// f16 widening), so the pages are worth a few percent of the step, not more.
struct PoolBuffers {
    num_blocks: usize,
    /// Layers kept in this pool.
    layers: usize,
    k: Rows,
    v: Rows,
}

impl PoolBuffers {
    fn new(
        cache_type: KvCacheType,
        n_layers: usize,
        num_blocks: usize,
        values_per_block: usize,
        head_dim: usize,
    ) -> Self {
        let len = n_layers * num_blocks * values_per_block;
        Self {
            num_blocks,
            layers: n_layers,
            k: Rows::new(cache_type, len, head_dim),
            v: Rows::new(cache_type, len, head_dim),
        }
    }

    fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}

/// K and V tensors for every layer, split in fixed-size blocks, in one or two pools
/// ([`KvPool`]).
///
/// Layout of each pool: `[block][layer of the pool][kv_head][slot][head_dim]`, as IEEE f16
/// bits (as llama.cpp's default cache type: half the memory of f32 and half the bytes
/// attention streams, for an error far below that of the 8-bit activations the matmuls use)
/// or, with [`KvCacheType::Q8_0`], as 8-bit values with an f16 scale per 32 of a row (about
/// half the bytes of f16 again). Within a block, each KV head's rows are contiguous, so
/// attention, which works one (sequence, KV head) at a time, reads one unbroken run per block
/// instead of every `kv_dim`-th stretch.
///
/// Every row is quantized on its own when written, so its stored bits depend only on its K/V
/// values: batch invariance and prefix-cache reuse hold for both formats.
///
/// The buffers are zero-allocated, so the OS maps pages only as blocks are first written:
/// resident memory grows with the blocks actually used, not with the configured capacity
/// (in 2 MiB steps where the buffers got huge pages; block-major keeps that to at most one
/// huge page per buffer beyond the blocks used, see `PoolBuffers`).
pub struct KvStorage {
    /// Layers of the model (both pools together).
    pub n_layers: usize,
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `n_kv_heads * head_dim`: the K (or V) values of one token in one layer.
    pub kv_dim: usize,
    cache_type: KvCacheType,
    /// Blocks of each pool (the sliding one 0 when no layer slides).
    sizes: (usize, usize),
    global: PoolBuffers,
    sliding: Option<PoolBuffers>,
    /// Per model layer: its pool and its index among that pool's layers.
    placement: Vec<(KvPool, usize)>,
}

impl KvStorage {
    /// One pool of `num_blocks` blocks holding every layer (every position of every layer).
    pub fn new(n_layers: usize, num_blocks: usize, block_size: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        Self::with_sliding_pool(&vec![false; n_layers], num_blocks, 0, block_size, n_kv_heads, head_dim)
    }

    /// Global layers in a pool of `num_blocks` blocks, and the layers with `sliding[layer]`
    /// in a pool of `sliding_blocks` blocks (none if no layer slides). Stored as f16
    /// ([`Self::with_cache_type`] changes that).
    pub fn with_sliding_pool(
        sliding: &[bool],
        num_blocks: usize,
        sliding_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let placement = sliding
            .iter()
            .scan((0, 0), |(globals, slidings), &slides| {
                let counter = if slides { slidings } else { globals };
                *counter += 1;
                Some((if slides { KvPool::Sliding } else { KvPool::Global }, *counter - 1))
            })
            .collect();
        let mut storage = Self {
            n_layers: sliding.len(),
            block_size,
            n_kv_heads,
            head_dim,
            kv_dim: n_kv_heads * head_dim,
            cache_type: KvCacheType::F16,
            sizes: (num_blocks, sliding_blocks),
            global: PoolBuffers::new(KvCacheType::F16, 0, 0, 0, head_dim),
            sliding: None,
            placement,
        };
        storage.allocate(KvCacheType::F16);
        storage
    }

    /// The same storage with K and V stored as `cache_type` (its contents start zeroed).
    pub fn with_cache_type(mut self, cache_type: KvCacheType) -> Self {
        if cache_type != self.cache_type {
            self.allocate(cache_type);
        }
        self
    }

    /// (Re)allocates both pools, zeroed, as `cache_type`.
    fn allocate(&mut self, cache_type: KvCacheType) {
        let layers_in = |pool: KvPool| self.placement.iter().filter(|(p, _)| *p == pool).count();
        let (globals, slidings) = (layers_in(KvPool::Global), layers_in(KvPool::Sliding));
        let per_block = self.block_size * self.kv_dim;
        let (num_blocks, sliding_blocks) = self.sizes;
        self.cache_type = cache_type;
        self.global = PoolBuffers::new(cache_type, globals, num_blocks, per_block, self.head_dim);
        self.sliding =
            (slidings > 0).then(|| PoolBuffers::new(cache_type, slidings, sliding_blocks, per_block, self.head_dim));
    }

    /// How K and V are stored.
    pub fn cache_type(&self) -> KvCacheType {
        self.cache_type
    }

    /// Whether sliding-window layers have their own pool (and releasable block tables).
    pub fn has_sliding_pool(&self) -> bool {
        self.sliding.is_some()
    }

    /// The pool holding `layer`'s K/V.
    #[inline]
    pub fn pool_of(&self, layer: usize) -> KvPool {
        self.placement[layer].0
    }

    /// Blocks in `pool` (0 for a sliding pool this storage does not have).
    pub fn num_blocks(&self, pool: KvPool) -> usize {
        match pool {
            KvPool::Global => self.global.num_blocks,
            KvPool::Sliding => self.sliding.as_ref().map_or(0, |s| s.num_blocks),
        }
    }

    /// Bytes of K and V in both pools (values and scales).
    pub fn bytes(&self) -> usize {
        self.global.bytes() + self.sliding.as_ref().map_or(0, PoolBuffers::bytes)
    }

    fn buffers(&self, layer: usize) -> &PoolBuffers {
        match (self.placement[layer].0, &self.sliding) {
            (KvPool::Sliding, Some(sliding)) => sliding,
            _ => &self.global,
        }
    }

    /// The K rows of `layer`'s pool (index them with [`Self::offset`]).
    #[inline]
    pub fn keys(&self, layer: usize) -> RowsView<'_> {
        self.buffers(layer).k.view()
    }

    /// The V rows of `layer`'s pool (index them with [`Self::offset`]).
    #[inline]
    pub fn values(&self, layer: usize) -> RowsView<'_> {
        self.buffers(layer).v.view()
    }

    /// Offset in [`Self::keys`] / [`Self::values`] of the `head_dim` values of (layer, block
    /// of the layer's pool, KV head, slot).
    #[inline]
    pub fn offset(&self, layer: usize, block: usize, kv_head: usize, slot: usize) -> usize {
        let local_layer = self.placement[layer].1;
        let layers = self.buffers(layer).layers;
        (((block * layers + local_layer) * self.n_kv_heads + kv_head) * self.block_size + slot) * self.head_dim
    }

    /// Distance in [`Self::keys`] / [`Self::values`] from a (layer, block, KV head, slot)'s
    /// rows to the same in the next block: all of the pool's layers lie between.
    #[inline]
    pub fn block_stride(&self, layer: usize) -> usize {
        self.buffers(layer).layers * self.block_size * self.kv_dim
    }

    /// Offset of KV head `kv_head` of the token at `pos` of a sequence with `block_table` (the
    /// sequence's table of `layer`'s pool).
    #[inline]
    pub fn position_offset(&self, layer: usize, block_table: &[u32], pos: usize, kv_head: usize) -> usize {
        self.offset(layer, block_table[pos / self.block_size] as usize, kv_head, pos % self.block_size)
    }

    /// Stores one token's K and V (`kv_dim` f32 each, rounded to f16 or quantized to q8_0) at
    /// `pos` of a sequence whose table in `layer`'s pool is `block_table`.
    pub fn write(&mut self, layer: usize, block_table: &[u32], pos: usize, key: &[f32], value: &[f32]) {
        let hd = self.head_dim;
        let first = self.position_offset(layer, block_table, pos, 0);
        let buffers = match (self.placement[layer].0, &mut self.sliding) {
            (KvPool::Sliding, Some(sliding)) => sliding,
            _ => &mut self.global,
        };
        let head_stride = self.block_size * hd;
        for (head, (key, value)) in key.chunks_exact(hd).zip(value.chunks_exact(hd)).enumerate() {
            let offset = first + head * head_stride;
            buffers.k.write(offset, key);
            buffers.v.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_anything_else_is_an_error_naming_the_field() {
        for name in KvCacheType::NAMES {
            assert_eq!(KvCacheType::parse(name).unwrap().name(), name);
        }
        for bad in ["q8", "F16", "", "q4_0"] {
            let error = KvCacheType::parse(bad).unwrap_err();
            assert!(matches!(error, Error::InvalidRequest { param: "kv_cache_type", .. }), "{bad}: {error}");
        }
    }

    #[test]
    fn q8_0_rounds_like_ggml_reference_quantizer() {
        // amax 127 gives d = 1: values round half away from zero (ggml's roundf).
        let mut values = vec![0f32; 32];
        values[0] = 127.0;
        values[1] = 2.5;
        values[2] = -2.5;
        values[3] = 0.49;
        values[4] = -126.5;
        let mut quants = [0i8; 32];
        let scale = quantize_q8_0(&values, &mut quants);
        assert_eq!(f16_to_f32(scale), 1.0);
        assert_eq!(&quants[..5], &[127, 3, -3, 0, -127]);
        // All zeros and tiny values store zeros, never saturated garbage.
        for tiny in [0.0, 1e-38, -3e-39] {
            let scale = quantize_q8_0(&[tiny; 32], &mut quants);
            assert!(quants.iter().all(|&q| q == 0) && f16_to_f32(scale) == 0.0, "{tiny}");
        }
    }

    #[test]
    fn a_q8_row_reads_back_within_half_a_step_of_each_run() {
        // head_dim 40: a full run of 32 and a short run of 8, each with its own scale.
        let mut kv = KvStorage::new(1, 2, 4, 2, 40).with_cache_type(KvCacheType::Q8_0);
        let key: Vec<f32> =
            (0..80).map(|i| ((i * 37 % 23) as f32 - 11.0) * if i % 40 < 32 { 0.1 } else { 3.0 }).collect();
        let value: Vec<f32> = key.iter().map(|k| -k).collect();
        kv.write(0, &[1, 0], 5, &key, &value);
        for head in 0..2 {
            let at = kv.position_offset(0, &[1, 0], 5, head);
            let (k, v) = (kv.keys(0).row_f32(at, 40), kv.values(0).row_f32(at, 40));
            for (i, (&got, &want)) in k.iter().zip(&key[head * 40..][..40]).enumerate() {
                let run = &key[head * 40 + i / 32 * 32..][..if i < 32 { 32 } else { 8 }];
                let step = run.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                // Half a step of rounding, plus the scale's own f16 rounding (2^-11 of it)
                // times at most 127 steps.
                let bound = step * 0.5 + 127.0 * step / 2048.0;
                assert!((got - want).abs() <= bound, "head {head} dim {i}: {got} vs {want}");
                assert_eq!(v[i], -got);
            }
        }
    }

    #[test]
    fn q8_storage_takes_the_bytes_its_type_says() {
        let f16 = KvStorage::with_sliding_pool(&[false, true, false], 10, 4, 16, 3, 64);
        let f16_bytes = f16.bytes();
        // Global: 2 layers × 10 blocks, sliding: 1 layer × 4 blocks; 16 slots × 3 heads, K and V.
        let rows = (2 * 10 + 4) * 16 * 3 * 2;
        assert_eq!(f16_bytes, rows * KvCacheType::F16.row_bytes(64));
        let q8 = f16.with_cache_type(KvCacheType::Q8_0);
        assert_eq!(q8.bytes(), rows * KvCacheType::Q8_0.row_bytes(64));
        assert_eq!(KvCacheType::Q8_0.row_bytes(64), 68);
        assert_eq!(q8.num_blocks(KvPool::Sliding), 4);
        assert_eq!(q8.cache_type(), KvCacheType::Q8_0);
    }

    /// The offsets of one block, every layer of its pool, KV head and slot.
    fn block_offsets(kv: &KvStorage, layers: &[usize], block: usize) -> Vec<usize> {
        let mut offsets = Vec::new();
        for &layer in layers {
            for head in 0..kv.n_kv_heads {
                for slot in 0..kv.block_size {
                    offsets.push(kv.offset(layer, block, head, slot));
                }
            }
        }
        offsets
    }

    #[test]
    fn a_block_holds_every_layer_of_its_pool_together() {
        let sliding = [false, true, false, true, true];
        let kv = KvStorage::with_sliding_pool(&sliding, 6, 4, 8, 2, 16);
        for (pool, layers) in [(KvPool::Global, vec![0, 2]), (KvPool::Sliding, vec![1, 3, 4])] {
            let stride = kv.block_stride(layers[0]);
            assert_eq!(stride, layers.len() * 8 * 2 * 16, "{pool:?}");
            for block in 0..kv.num_blocks(pool) {
                // Every row of the block lies in [block · stride, (block + 1) · stride), each
                // row once: the block's rows of all the pool's layers fill that range exactly.
                let mut offsets = block_offsets(&kv, &layers, block);
                offsets.sort_unstable();
                let want: Vec<usize> = (0..stride / 16).map(|row| block * stride + row * 16).collect();
                assert_eq!(offsets, want, "{pool:?} block {block}");
                // The stride attention steps by from a block's rows to the next block's.
                for &layer in &layers {
                    assert_eq!(kv.offset(layer, block, 1, 3) + stride, kv.offset(layer, block + 1, 1, 3));
                }
            }
        }
    }

    /// A short sequence's blocks commit little memory although the buffers are huge pages:
    /// layer-major, its first block touched a 2 MiB page per layer (60 MB of K here).
    #[test]
    fn resident_memory_follows_the_blocks_used_not_the_layers() {
        use crate::memory::tests::{has_transparent_huge_pages, resident_bytes, vm_flags_at};
        // SmolLM2's geometry: 30 layers, 3 KV heads of 64; 1024 blocks (6 MB of K per layer).
        let (layers, blocks, block_size) = (30, 1024, 16);
        for cache_type in [KvCacheType::F16, KvCacheType::Q8_0] {
            let mut kv = KvStorage::new(layers, blocks, block_size, 3, 64).with_cache_type(cache_type);
            let key = vec![0.5f32; kv.kv_dim];
            let table = [0u32, 1];
            for layer in 0..layers {
                for pos in 0..2 * block_size {
                    kv.write(layer, &table, pos, &key, &key);
                }
            }
            // The values' buffer only: it is larger than glibc's largest mmap threshold (32 MiB),
            // so it is always a fresh mapping. The q8_0 scales (6 MB here) are not bounded: below
            // that threshold the allocator may serve them from its heap, where `calloc` zeroes,
            // and so commits, the whole buffer (seen in a full `--lib` run).
            let k = match &kv.global.k {
                Rows::F16(bits) => resident_bytes(bits),
                Rows::Q8 { quants, .. } => resident_bytes(quants),
            };
            // Two blocks of K are 2 x 30 x 3 x 16 rows (368 KB as f16); the buffer's first
            // stretch before a 2 MiB boundary and one huge page may be resident beyond that.
            let used = 2 * layers * 3 * block_size * cache_type.row_bytes(64);
            assert!(k <= used + 2 * (2 << 20), "{cache_type}: {k} bytes resident for {used} used");
            assert!(k >= used.min(4096), "{cache_type}: {k} bytes resident: the blocks were not written?");
            if has_transparent_huge_pages() {
                let Rows::F16(bits) = &kv.global.k else { continue };
                let inner = (bits.as_ptr() as usize).next_multiple_of(2 << 20);
                let flags = vm_flags_at(inner).expect("the K buffer's mapping is in /proc/self/smaps");
                assert!(flags.split_whitespace().any(|f| f == "hg"), "K not advised as huge pages: {flags}");
            }
        }
    }
}
