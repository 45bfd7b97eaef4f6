//! Paged KV cache: the storage the model reads and writes ([`KvStorage`]) and the block
//! allocator with ref-counted prefix sharing that the scheduler drives ([`BlockAllocator`]).

/// K and V tensors for every layer, split in fixed-size blocks.
///
/// Layout of `k` and `v`: `[layer][block][slot][kv_dim]`, f32, contiguous, where
/// `kv_dim = n_kv_heads * head_dim`. A token's K for layer `l` at block `b`, slot `s` starts at
/// `((l * num_blocks + b) * block_size + s) * kv_dim`.
pub struct KvStorage {
    pub n_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_dim: usize,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvStorage {
    pub fn new(n_layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize) -> Self {
        let len = n_layers * num_blocks * block_size * kv_dim;
        Self { n_layers, num_blocks, block_size, kv_dim, k: vec![0.0; len], v: vec![0.0; len] }
    }

    /// Offset of (layer, block, slot) in `k` / `v`.
    #[inline]
    pub fn offset(&self, layer: usize, block: usize, slot: usize) -> usize {
        ((layer * self.num_blocks + block) * self.block_size + slot) * self.kv_dim
    }

    /// Offset of the token at `pos` of a sequence with `block_table`, for `layer`.
    #[inline]
    pub fn position_offset(&self, layer: usize, block_table: &[u32], pos: usize) -> usize {
        self.offset(layer, block_table[pos / self.block_size] as usize, pos % self.block_size)
    }
}
