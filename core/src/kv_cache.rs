//! Paged KV cache: the storage the model reads and writes ([`KvStorage`]). The block
//! allocator with ref-counted prefix sharing that the scheduler drives ([`BlockAllocator`])
//! lives beside the scheduler (`engine::block_allocator`); its public names stay here too.

pub use crate::engine::block_allocator::{
    block_hash, prefix_contents, BlockAllocator, BlockHash, BlockTable, CachedContents, OutOfBlocks, RELEASED_BLOCK,
};

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

/// K and V of the layers of one pool: `[layer][block][kv_head][slot][head_dim]` f16 bits.
struct PoolBuffers {
    num_blocks: usize,
    k: Vec<u16>,
    v: Vec<u16>,
}

impl PoolBuffers {
    fn new(n_layers: usize, num_blocks: usize, values_per_block: usize) -> Self {
        let len = n_layers * num_blocks * values_per_block;
        Self { num_blocks, k: vec![0; len], v: vec![0; len] }
    }
}

/// K and V tensors for every layer, split in fixed-size blocks, in one or two pools
/// ([`KvPool`]).
///
/// Layout of each pool: `[layer of the pool][block][kv_head][slot][head_dim]` of IEEE f16 bits
/// (as llama.cpp's default cache type: half the memory of f32 and half the bytes attention
/// streams, for an error far below that of the 8-bit activations the matmuls use). Within a
/// block, each KV head's rows are contiguous, so attention, which works one (sequence, KV
/// head) at a time, reads one unbroken run per block instead of every `kv_dim`-th stretch.
///
/// The buffers are zero-allocated, so the OS maps pages only as blocks are first written:
/// resident memory grows with the blocks actually used, not with the configured capacity.
pub struct KvStorage {
    /// Layers of the model (both pools together).
    pub n_layers: usize,
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `n_kv_heads * head_dim`: the K (or V) values of one token in one layer.
    pub kv_dim: usize,
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
    /// in a pool of `sliding_blocks` blocks (none if no layer slides).
    /// Global layers in a pool of `num_blocks` blocks, and the layers with `sliding[layer]`
    /// in a pool of `sliding_blocks` blocks (none if no layer slides).
    pub fn with_sliding_pool(
        sliding: &[bool],
        num_blocks: usize,
        sliding_blocks: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let kv_dim = n_kv_heads * head_dim;
        let (mut globals, mut slidings) = (0, 0);
        let placement = sliding
            .iter()
            .map(|&slides| {
                let counter = if slides { &mut slidings } else { &mut globals };
                *counter += 1;
                (if slides { KvPool::Sliding } else { KvPool::Global }, *counter - 1)
            })
            .collect();
        let per_block = block_size * kv_dim;
        Self {
            n_layers: sliding.len(),
            block_size,
            n_kv_heads,
            head_dim,
            kv_dim,
            global: PoolBuffers::new(globals, num_blocks, per_block),
            sliding: (slidings > 0).then(|| PoolBuffers::new(slidings, sliding_blocks, per_block)),
            placement,
        }
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

    /// Bytes of K and V in both pools.
    pub fn bytes(&self) -> usize {
        let pool_bytes = |p: &PoolBuffers| (p.k.len() + p.v.len()) * std::mem::size_of::<u16>();
        pool_bytes(&self.global) + self.sliding.as_ref().map_or(0, pool_bytes)
    }

    fn buffers(&self, layer: usize) -> &PoolBuffers {
        match (self.placement[layer].0, &self.sliding) {
            (KvPool::Sliding, Some(sliding)) => sliding,
            _ => &self.global,
        }
    }

    /// The K buffer of `layer`'s pool (index it with [`Self::offset`]).
    #[inline]
    pub fn keys(&self, layer: usize) -> &[u16] {
        &self.buffers(layer).k
    }

    /// The V buffer of `layer`'s pool (index it with [`Self::offset`]).
    #[inline]
    pub fn values(&self, layer: usize) -> &[u16] {
        &self.buffers(layer).v
    }

    /// Every K and V value of both pools, to fill in tests.
    #[doc(hidden)]
    pub fn all_values_mut(&mut self) -> impl Iterator<Item = &mut u16> {
        let sliding = self.sliding.iter_mut().flat_map(|s| s.k.iter_mut().chain(s.v.iter_mut()));
        self.global.k.iter_mut().chain(self.global.v.iter_mut()).chain(sliding)
    }

    /// Offset in [`Self::keys`] / [`Self::values`] of the `head_dim` values of (layer, block
    /// of the layer's pool, KV head, slot).
    #[inline]
    pub fn offset(&self, layer: usize, block: usize, kv_head: usize, slot: usize) -> usize {
        let local_layer = self.placement[layer].1;
        let num_blocks = self.buffers(layer).num_blocks;
        (((local_layer * num_blocks + block) * self.n_kv_heads + kv_head) * self.block_size + slot) * self.head_dim
    }

    /// Offset of KV head `kv_head` of the token at `pos` of a sequence with `block_table` (the
    /// sequence's table of `layer`'s pool).
    #[inline]
    pub fn position_offset(&self, layer: usize, block_table: &[u32], pos: usize, kv_head: usize) -> usize {
        self.offset(layer, block_table[pos / self.block_size] as usize, kv_head, pos % self.block_size)
    }

    /// Stores one token's K and V (`kv_dim` f32 each, rounded to f16) at `pos` of a sequence
    /// whose table in `layer`'s pool is `block_table`.
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
            crate::f16::f32_slice_to_f16(key, &mut buffers.k[offset..offset + hd]);
            crate::f16::f32_slice_to_f16(value, &mut buffers.v[offset..offset + hd]);
        }
    }
}
