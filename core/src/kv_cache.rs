//! Paged KV cache: the storage the model reads and writes ([`KvStorage`]) and the block
//! allocator with ref-counted prefix sharing that the scheduler drives ([`BlockAllocator`]).

/// K and V tensors for every layer, split in fixed-size blocks.
///
/// Layout of `k` and `v`: `[layer][block][kv_head][slot][head_dim]` of IEEE f16 bits (as
/// llama.cpp's default cache type: half the memory of f32 and half the bytes attention streams,
/// for an error far below that of the 8-bit activations the matmuls use). Within a block, each
/// KV head's rows are contiguous, so attention, which works one (sequence, KV head) at a time,
/// reads one unbroken run per block instead of every `kv_dim`-th stretch.
///
/// The buffers are zero-allocated, so the OS maps pages only as blocks are first written:
/// resident memory grows with the blocks actually used, not with the configured capacity.
pub struct KvStorage {
    pub n_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `n_kv_heads * head_dim`: the K (or V) values of one token in one layer.
    pub kv_dim: usize,
    pub k: Vec<u16>,
    pub v: Vec<u16>,
}

impl KvStorage {
    pub fn new(n_layers: usize, num_blocks: usize, block_size: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        let kv_dim = n_kv_heads * head_dim;
        let len = n_layers * num_blocks * block_size * kv_dim;
        Self { n_layers, num_blocks, block_size, n_kv_heads, head_dim, kv_dim, k: vec![0; len], v: vec![0; len] }
    }

    /// Offset in `k` / `v` of the `head_dim` values of (layer, block, KV head, slot).
    #[inline]
    pub fn offset(&self, layer: usize, block: usize, kv_head: usize, slot: usize) -> usize {
        (((layer * self.num_blocks + block) * self.n_kv_heads + kv_head) * self.block_size + slot) * self.head_dim
    }

    /// Offset of KV head `kv_head` of the token at `pos` of a sequence with `block_table`.
    #[inline]
    pub fn position_offset(&self, layer: usize, block_table: &[u32], pos: usize, kv_head: usize) -> usize {
        self.offset(layer, block_table[pos / self.block_size] as usize, kv_head, pos % self.block_size)
    }

    /// Stores one token's K and V (`kv_dim` f32 each, rounded to f16) at `pos` of a sequence.
    pub fn write(&mut self, layer: usize, block_table: &[u32], pos: usize, key: &[f32], value: &[f32]) {
        let hd = self.head_dim;
        for (head, (key, value)) in key.chunks_exact(hd).zip(value.chunks_exact(hd)).enumerate() {
            let offset = self.position_offset(layer, block_table, pos, head);
            crate::f16::f32_slice_to_f16(key, &mut self.k[offset..offset + hd]);
            crate::f16::f32_slice_to_f16(value, &mut self.v[offset..offset + hd]);
        }
    }
}

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Identity of a full block of tokens at a given place in a sequence: a hash chained over
/// every token from the start of the sequence, so equal ids mean equal prefixes.
pub type BlockHash = u64;

/// The chained hash of a block of `tokens` that follows a block with hash `parent`.
pub fn block_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    // DefaultHasher::new() uses fixed keys: hashes are stable within (and across) processes.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut hasher);
    tokens.hash(&mut hasher);
    hasher.finish()
}

/// What the prefix cache remembers about a full block, to confirm a hash hit is real.
struct CachedBlock {
    hash: BlockHash,
    parent: Option<BlockHash>,
    tokens: Box<[u32]>,
}

/// Hands out KV blocks and shares full prompt blocks between sequences.
///
/// Every block is in exactly one state:
/// - **in use**: `ref_count > 0`, listed in one or more sequences' block tables;
/// - **free**: `ref_count == 0`, holds nothing useful, on the `free` stack;
/// - **cached**: `ref_count == 0` but its full contents are registered in the prefix cache,
///   kept until the space is needed (then evicted least-recently-used first).
///
/// Allocating from and returning to the free stack is O(1); evicting a cached block is
/// O(log n) in the number of cached blocks.
pub struct BlockAllocator {
    block_size: usize,
    ref_count: Vec<u32>,
    free: Vec<u32>,
    cached: Vec<Option<CachedBlock>>,
    by_hash: HashMap<BlockHash, u32>,
    /// Evictable cached blocks by last use (a logical clock), oldest first.
    evictable: BTreeMap<u64, u32>,
    last_use: Vec<u64>,
    clock: u64,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(num_blocks > 0 && block_size > 0, "KV cache needs at least one block of one slot");
        Self {
            block_size,
            ref_count: vec![0; num_blocks],
            // Reversed so that block 0 is handed out first (easier to read in debugging).
            free: (0..num_blocks as u32).rev().collect(),
            cached: (0..num_blocks).map(|_| None).collect(),
            by_hash: HashMap::new(),
            evictable: BTreeMap::new(),
            last_use: vec![0; num_blocks],
            clock: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks holding nothing and registered nowhere.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks a sequence of `tokens` positions needs.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Takes one block for exclusive use, evicting the least recently used cached block
    /// when no free one is left. `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                self.forget(b);
                b
            }
        };
        self.ref_count[block as usize] = 1;
        Some(block)
    }

    /// Drops one reference to `block`. The last reference returns it to the free stack, or
    /// keeps it as an evictable cached block when its contents are registered.
    pub fn release(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.ref_count[b] > 0, "block {block} released more often than acquired");
        self.ref_count[b] = self.ref_count[b].saturating_sub(1);
        if self.ref_count[b] == 0 {
            if self.cached[b].is_some() {
                self.clock += 1;
                self.last_use[b] = self.clock;
                self.evictable.insert(self.clock, block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Releases every block of a table.
    pub fn release_all(&mut self, table: &[u32]) {
        for &b in table {
            self.release(b);
        }
    }

    /// Registers a full, computed block so later sequences with the same prefix can share it.
    /// Returns the block's hash, the `parent` of the next block.
    pub fn register_full_block(&mut self, block: u32, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        debug_assert_eq!(tokens.len(), self.block_size);
        let hash = block_hash(parent, tokens);
        let b = block as usize;
        if self.cached[b].is_none() && !self.by_hash.contains_key(&hash) {
            self.cached[b] = Some(CachedBlock { hash, parent, tokens: tokens.into() });
            self.by_hash.insert(hash, block);
        }
        hash
    }

    /// Looks up the longest run of cached full blocks that starts `tokens`, at most
    /// `max_blocks` long, and takes a reference to each. Returns the blocks and the hash of
    /// the last one.
    pub fn acquire_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, Option<BlockHash>) {
        let mut blocks = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = block_hash(parent, chunk);
            let Some(&block) = self.by_hash.get(&hash) else { break };
            let entry = self.cached[block as usize].as_ref();
            // Guard against a 64-bit hash collision: the contents must really match.
            if !entry.is_some_and(|e| e.parent == parent && &*e.tokens == chunk) {
                break;
            }
            let b = block as usize;
            if self.ref_count[b] == 0 {
                self.evictable.remove(&self.last_use[b]);
            }
            self.ref_count[b] += 1;
            blocks.push(block);
            parent = Some(hash);
        }
        (blocks, parent)
    }

    /// Removes a block's registration (it is about to be overwritten).
    fn forget(&mut self, block: u32) {
        if let Some(entry) = self.cached[block as usize].take() {
            if self.by_hash.get(&entry.hash) == Some(&block) {
                self.by_hash.remove(&entry.hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_release_everything() {
        let mut a = BlockAllocator::new(4, 2);
        let blocks: Vec<u32> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(a.allocate(), None);
        assert_eq!(a.available(), 0);
        a.release_all(&blocks);
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn shares_registered_prefix_blocks() {
        let mut a = BlockAllocator::new(8, 2);
        let prompt = [1, 2, 3, 4, 5];
        let b0 = a.allocate().unwrap();
        let b1 = a.allocate().unwrap();
        let h0 = a.register_full_block(b0, None, &prompt[0..2]);
        a.register_full_block(b1, Some(h0), &prompt[2..4]);

        let (shared, last) = a.acquire_prefix(&prompt, 8);
        assert_eq!(shared, vec![b0, b1]);
        assert_eq!(last, Some(block_hash(Some(h0), &prompt[2..4])));

        // A different second block shares only the first.
        let (shared, _) = a.acquire_prefix(&[1, 2, 9, 9], 8);
        assert_eq!(shared, vec![b0]);
        // max_blocks caps the hit.
        let (shared, _) = a.acquire_prefix(&prompt, 1);
        assert_eq!(shared, vec![b0]);
    }

    #[test]
    fn cached_blocks_survive_release_until_evicted() {
        let mut a = BlockAllocator::new(2, 2);
        let b0 = a.allocate().unwrap();
        a.register_full_block(b0, None, &[7, 7]);
        a.release(b0);
        assert_eq!(a.available(), 2);
        // Still reusable after release.
        let (shared, _) = a.acquire_prefix(&[7, 7, 1], 4);
        assert_eq!(shared, vec![b0]);
        a.release(b0);
        // Exhaust the cache: the cached block gets evicted and forgotten.
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert!(a.allocate().is_none());
        let (shared, _) = a.acquire_prefix(&[7, 7, 1], 4);
        assert!(shared.is_empty());
        a.release(x);
        a.release(y);
        assert_eq!(a.free_blocks(), 2);
    }
}
