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
use std::sync::{Arc, Mutex, MutexGuard};

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
/// Blocks leave the allocator only inside a [`BlockTable`], and a table gives its blocks
/// back when it is released or dropped: whatever path a sequence takes out of the engine,
/// its blocks cannot stay allocated. The allocator is a cheap handle (clones share one
/// pool) so that a table can find its way back without being passed the allocator.
///
/// Every block is in exactly one state:
/// - **in use**: `ref_count > 0`, listed in one or more block tables;
/// - **free**: `ref_count == 0`, holds nothing useful, on the `free` stack;
/// - **cached**: `ref_count == 0` but its full contents are registered in the prefix cache,
///   kept until the space is needed.
///
/// Cached blocks form chains (each block's hash covers its parent's). A chain is only
/// reachable from its root, so eviction takes leaves first: a block is evictable only once no
/// cached block names it as parent, and among evictable blocks the least recently used goes
/// first. Because a block is registered only when its table also holds its cached parent, a
/// block in use keeps its parent in use, so every idle cached block can be reclaimed
/// (leaves first) and counts as available.
///
/// Allocating from and returning to the free stack is O(1); evicting a cached block is
/// O(log n) in the number of cached blocks.
#[derive(Clone)]
pub struct BlockAllocator {
    pool: Arc<Mutex<BlockPool>>,
}

/// The blocks one sequence holds, in position order (position `p` lives in block
/// `self[p / block_size]`). Releasing or dropping the table returns every block to the
/// allocator that handed it out.
#[derive(Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    /// The pool the blocks came from (none while the table has never held a block).
    pool: Option<Arc<Mutex<BlockPool>>>,
}

impl BlockTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives every block back to its allocator; the table is empty afterwards.
    pub fn release(&mut self) {
        if self.blocks.is_empty() {
            return;
        }
        if let Some(pool) = &self.pool {
            lock(pool).release_all(&self.blocks);
        }
        self.blocks.clear();
    }

    /// Makes `pool` the one this table's blocks go back to.
    fn adopt(&mut self, pool: &Arc<Mutex<BlockPool>>) {
        debug_assert!(
            self.pool.as_ref().is_none_or(|p| Arc::ptr_eq(p, pool)),
            "a block table takes blocks from one allocator only"
        );
        self.pool.get_or_insert_with(|| Arc::clone(pool));
    }
}

impl std::ops::Deref for BlockTable {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.blocks
    }
}

impl std::fmt::Debug for BlockTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.blocks).finish()
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.release();
    }
}

/// The pool is only touched by the engine thread, so the lock is never contended; a panic
/// while it was held (a bug) leaves consistent counts behind, so poisoning is ignored.
fn lock(pool: &Mutex<BlockPool>) -> MutexGuard<'_, BlockPool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Not enough blocks are available for an allocation; nothing was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBlocks;

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(num_blocks > 0 && block_size > 0, "KV cache needs at least one block of one slot");
        let pool = BlockPool {
            block_size,
            ref_count: vec![0; num_blocks],
            // Reversed so that block 0 is handed out first (easier to read in debugging).
            free: (0..num_blocks as u32).rev().collect(),
            cached: (0..num_blocks).map(|_| None).collect(),
            cached_children: vec![0; num_blocks],
            by_hash: HashMap::new(),
            evictable: BTreeMap::new(),
            idle_cached: 0,
            last_use: vec![0; num_blocks],
            clock: 0,
        };
        Self { pool: Arc::new(Mutex::new(pool)) }
    }

    fn pool(&self) -> MutexGuard<'_, BlockPool> {
        lock(&self.pool)
    }

    pub fn block_size(&self) -> usize {
        self.pool().block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool().ref_count.len()
    }

    /// Blocks that can be handed out now (free, or cached and idle).
    pub fn available(&self) -> usize {
        let pool = self.pool();
        pool.free.len() + pool.idle_cached
    }

    /// Blocks holding nothing and registered nowhere.
    pub fn free_blocks(&self) -> usize {
        self.pool().free.len()
    }

    /// Blocks a sequence of `tokens` positions needs.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.pool().block_size)
    }

    /// Adds `count` blocks for exclusive use to `table`, evicting cached blocks (leaves first,
    /// least recently used first) when no free one is left. All or nothing.
    pub fn allocate_into(&self, table: &mut BlockTable, count: usize) -> Result<(), OutOfBlocks> {
        table.adopt(&self.pool);
        // Straight into the table's own vector: no allocation per step beyond its growth.
        self.pool().allocate(count, &mut table.blocks)
    }

    /// Looks up the longest run of cached full blocks that starts `tokens`, at most
    /// `max_blocks` long, and returns a table holding a reference to each, with the hash of the
    /// last one.
    pub fn acquire_prefix(&self, tokens: &[u32], max_blocks: usize) -> (BlockTable, Option<BlockHash>) {
        let (blocks, last) = self.pool().acquire_prefix(tokens, max_blocks);
        (BlockTable { blocks, pool: Some(Arc::clone(&self.pool)) }, last)
    }

    /// Registers the full, computed block `table[index]` (its `tokens` follow a block with
    /// hash `parent`) so later sequences with the same prefix can share it. Returns the
    /// block's hash, the `parent` of the next block.
    ///
    /// The block is registered only when the block before it in `table` is the one cached
    /// under `parent` (so the cached chain stays reachable, and this table holds the parent
    /// while it holds the child), and no other block already holds the same contents.
    pub fn register_full_block(
        &self,
        table: &BlockTable,
        index: usize,
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) -> BlockHash {
        let previous = index.checked_sub(1).map(|i| table[i]);
        self.pool().register(table[index], previous, parent, tokens)
    }
}

/// The allocator's state (see [`BlockAllocator`]).
struct BlockPool {
    block_size: usize,
    ref_count: Vec<u32>,
    free: Vec<u32>,
    cached: Vec<Option<CachedBlock>>,
    /// How many cached blocks name each block as their parent.
    cached_children: Vec<u32>,
    by_hash: HashMap<BlockHash, u32>,
    /// Cached blocks that are idle and have no cached children, by last use (a logical
    /// clock), oldest first: the eviction order.
    evictable: BTreeMap<u64, u32>,
    /// Cached blocks with no reference (evictable now, or once their children are).
    idle_cached: usize,
    last_use: Vec<u64>,
    clock: u64,
}

impl BlockPool {
    fn available(&self) -> usize {
        self.free.len() + self.idle_cached
    }

    /// Appends `count` blocks to `blocks`, or none if fewer are available.
    fn allocate(&mut self, count: usize, blocks: &mut Vec<u32>) -> Result<(), OutOfBlocks> {
        if self.available() < count {
            return Err(OutOfBlocks);
        }
        for _ in 0..count {
            let block = match self.free.pop() {
                Some(b) => b,
                None => self.evict_one(),
            };
            self.ref_count[block as usize] = 1;
            blocks.push(block);
        }
        Ok(())
    }

    /// Reclaims the least recently used cached leaf. Only called when no block is free and
    /// `available()` said an idle cached block exists, so a leaf exists too: the subtree of an
    /// idle cached block is idle (see [`BlockAllocator`]), and its deepest block is a leaf.
    fn evict_one(&mut self) -> u32 {
        let Some((_, block)) = self.evictable.pop_first() else {
            unreachable!("an idle cached block always has an idle cached leaf")
        };
        self.idle_cached -= 1;
        self.forget(block);
        block
    }

    /// Drops one reference to each block of a table.
    fn release_all(&mut self, table: &[u32]) {
        for &block in table {
            self.release(block);
        }
    }

    /// Drops one reference to `block`. The last reference returns it to the free stack, or
    /// keeps it as an idle cached block when its contents are registered.
    fn release(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.ref_count[b] > 0, "block {block} released more often than acquired");
        self.ref_count[b] = self.ref_count[b].saturating_sub(1);
        if self.ref_count[b] > 0 {
            return;
        }
        if self.cached[b].is_none() {
            self.free.push(block);
            return;
        }
        self.clock += 1;
        self.last_use[b] = self.clock;
        self.idle_cached += 1;
        if self.cached_children[b] == 0 {
            self.evictable.insert(self.clock, block);
        }
    }

    fn register(&mut self, block: u32, previous: Option<u32>, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        debug_assert_eq!(tokens.len(), self.block_size);
        let hash = block_hash(parent, tokens);
        let b = block as usize;
        let parent_block = match parent {
            None => None,
            Some(h) => match self.by_hash.get(&h) {
                Some(&p) if Some(p) == previous => Some(p),
                // The parent is not cached, or cached as another block this table does not
                // hold: the block would be unreachable, or could outlive its parent's holder.
                _ => return hash,
            },
        };
        if self.cached[b].is_none() && !self.by_hash.contains_key(&hash) {
            self.cached[b] = Some(CachedBlock { hash, parent, tokens: tokens.into() });
            self.by_hash.insert(hash, block);
            if let Some(p) = parent_block {
                self.cached_children[p as usize] += 1;
            }
        }
        hash
    }

    fn acquire_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, Option<BlockHash>) {
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
                self.idle_cached -= 1;
                self.evictable.remove(&self.last_use[b]);
            }
            self.ref_count[b] += 1;
            blocks.push(block);
            parent = Some(hash);
        }
        (blocks, parent)
    }

    /// Removes an evicted block's registration (it is about to be overwritten); its parent
    /// becomes evictable once it has no other cached child and nobody holds it.
    fn forget(&mut self, block: u32) {
        let Some(entry) = self.cached[block as usize].take() else { return };
        if self.by_hash.get(&entry.hash) == Some(&block) {
            self.by_hash.remove(&entry.hash);
        }
        let Some(&parent) = entry.parent.as_ref().and_then(|h| self.by_hash.get(h)) else { return };
        let p = parent as usize;
        self.cached_children[p] -= 1;
        if self.cached_children[p] == 0 && self.ref_count[p] == 0 {
            // Back in the eviction order at its own last use.
            self.evictable.insert(self.last_use[p], parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `count` fresh blocks.
    fn take(a: &BlockAllocator, count: usize) -> BlockTable {
        let mut table = BlockTable::new();
        a.allocate_into(&mut table, count).unwrap();
        table
    }

    /// A table holding `prompt`'s full blocks, each registered as a sequence would.
    fn computed_prompt(a: &BlockAllocator, prompt: &[u32]) -> BlockTable {
        let block_size = a.block_size();
        let table = take(a, prompt.len() / block_size);
        let mut parent = None;
        for (i, chunk) in prompt.chunks_exact(block_size).enumerate() {
            parent = Some(a.register_full_block(&table, i, parent, chunk));
        }
        table
    }

    #[test]
    fn allocate_and_release_everything() {
        let a = BlockAllocator::new(4, 2);
        let mut table = take(&a, 4);
        assert_eq!(a.allocate_into(&mut BlockTable::new(), 1), Err(OutOfBlocks));
        assert_eq!(a.available(), 0);
        table.release();
        assert!(table.is_empty());
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn an_allocation_that_does_not_fit_takes_nothing() {
        let a = BlockAllocator::new(4, 2);
        let _held = take(&a, 3);
        let mut table = BlockTable::new();
        assert_eq!(a.allocate_into(&mut table, 2), Err(OutOfBlocks));
        assert!(table.is_empty());
        assert_eq!(a.available(), 1);
    }

    #[test]
    fn dropping_a_table_returns_its_blocks() {
        let a = BlockAllocator::new(4, 2);
        let table = take(&a, 3);
        assert_eq!(a.available(), 1);
        drop(table);
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn shares_registered_prefix_blocks() {
        let a = BlockAllocator::new(8, 2);
        let prompt = [1, 2, 3, 4, 5];
        let table = computed_prompt(&a, &prompt[..4]);
        let h0 = block_hash(None, &prompt[0..2]);

        let (shared, last) = a.acquire_prefix(&prompt, 8);
        assert_eq!(*shared, *table);
        assert_eq!(last, Some(block_hash(Some(h0), &prompt[2..4])));

        // A different second block shares only the first.
        let (shared, _) = a.acquire_prefix(&[1, 2, 9, 9], 8);
        assert_eq!(*shared, [table[0]]);
        // max_blocks caps the hit.
        let (shared, _) = a.acquire_prefix(&prompt, 1);
        assert_eq!(*shared, [table[0]]);
    }

    #[test]
    fn eviction_takes_the_leaves_of_a_cached_prompt_first() {
        // A three-block prompt, cached and released, fills three of four blocks.
        let a = BlockAllocator::new(4, 2);
        let prompt = [1, 2, 3, 4, 5, 6];
        let cached = computed_prompt(&a, &prompt);
        let chain = cached.to_vec();
        drop(cached);
        assert_eq!(a.available(), 4, "idle cached blocks count as available");

        // Two blocks needed, one free: one cached block must go, and it must be the last
        // of the chain, so the first two blocks of the prompt stay reachable.
        let other = take(&a, 2);
        assert!(other.contains(&chain[2]), "evicted {other:?}, chain {chain:?}");
        let (shared, _) = a.acquire_prefix(&prompt, 3);
        assert_eq!(*shared, chain[..2]);
        drop(shared);

        // Then the next leaf, and the root last.
        let more = take(&a, 1);
        assert_eq!(*more, [chain[1]]);
        let (shared, _) = a.acquire_prefix(&prompt, 3);
        assert_eq!(*shared, chain[..1]);
        drop(shared);
        let last = take(&a, 1);
        assert_eq!(*last, [chain[0]]);
        assert_eq!(a.available(), 0);
        drop((other, more, last));
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn a_recently_used_chain_outlives_an_older_one() {
        let a = BlockAllocator::new(4, 2);
        let old = computed_prompt(&a, &[1, 1, 2, 2]).to_vec();
        let new = computed_prompt(&a, &[3, 3, 4, 4]).to_vec();
        // Both were dropped above (old first). Evicting two blocks empties the old chain,
        // leaf first, and leaves the new one whole.
        let taken = take(&a, 2);
        assert_eq!(*taken, [old[1], old[0]]);
        let (shared, _) = a.acquire_prefix(&[3, 3, 4, 4, 5], 2);
        assert_eq!(*shared, new[..]);
    }

    #[test]
    fn a_block_whose_parent_is_not_in_its_table_is_not_cached() {
        let a = BlockAllocator::new(8, 2);
        let first = computed_prompt(&a, &[1, 1]);
        // A second sequence computed the same first block itself (before it was cached), so
        // its copy is not the cached one: its second block must not hang off a parent it
        // does not hold.
        let second = take(&a, 2);
        let h0 = a.register_full_block(&second, 0, None, &[1, 1]);
        a.register_full_block(&second, 1, Some(h0), &[2, 2]);
        let (shared, _) = a.acquire_prefix(&[1, 1, 2, 2, 3], 2);
        assert_eq!(*shared, [first[0]]);
        drop((first, second, shared));
        assert_eq!(a.available(), 8);
        // Every idle block can be handed out again.
        let all = take(&a, 8);
        assert_eq!(all.len(), 8);
    }
}
