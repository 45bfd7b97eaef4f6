//! The KV block allocator the scheduler drives: fixed-size blocks handed to sequences as
//! [`BlockTable`]s, with ref-counted sharing of registered prefix blocks and eviction of the
//! cached ones no sequence holds.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

/// The entry of a block table whose block was given back (a sliding block before the window):
/// never read, and never a valid block index.
pub const RELEASED_BLOCK: u32 = u32::MAX;

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

/// The contents of a full block at a place in a sequence: its chained hash, its parent's,
/// and its tokens.
#[derive(Debug, Clone, Copy)]
pub struct CachedContents<'a> {
    pub hash: BlockHash,
    pub parent: Option<BlockHash>,
    pub tokens: &'a [u32],
}

/// The contents of the first `count` full blocks of `tokens`, hashes chained from the start.
pub fn prefix_contents(tokens: &[u32], block_size: usize, count: usize) -> Vec<CachedContents<'_>> {
    let mut parent = None;
    tokens
        .chunks_exact(block_size)
        .take(count)
        .map(|tokens| {
            let hash = block_hash(parent, tokens);
            let contents = CachedContents { hash, parent, tokens };
            parent = Some(hash);
            contents
        })
        .collect()
}

/// What the prefix cache remembers about a full block, to confirm a hash hit is real.
struct CachedBlock {
    hash: BlockHash,
    parent: Option<BlockHash>,
    tokens: Box<[u32]>,
    /// Counted in its parent block's `cached_children` (false for sliding-window blocks,
    /// registered on their own: see [`BlockAllocator::register_window_block`]).
    chained: bool,
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
/// A sliding-window pool's blocks are registered on their own, found by hash, never by
/// walking a chain ([`Self::register_window_block`]). Those a table gives back as they leave
/// its window ([`BlockTable::release_before`]) are handed out again before any block that was
/// never used (whose memory was never touched): a long sequence keeps reusing about a window
/// of blocks instead of walking the pool, while a finished sequence's last window stays
/// cached, like any prefix, until no never-used block is left.
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
///
/// A sliding-window table may give back its leading blocks early
/// ([`Self::release_before`]): their entries become [`RELEASED_BLOCK`], so positions keep
/// their index.
#[derive(Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    /// Leading entries already given back (all [`RELEASED_BLOCK`]).
    released: usize,
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
            lock(pool).release_all(&self.blocks[self.released..]);
        }
        self.blocks.clear();
        self.released = 0;
    }

    /// Gives back the blocks of entries `..index` (those not given back yet); their entries
    /// become [`RELEASED_BLOCK`]. For a sliding-window table, whose positions before the
    /// window are never read again. Cached ones among them are the first reused when a block
    /// is needed (see [`BlockAllocator`]), so a long sequence keeps reusing the memory of its
    /// window instead of touching new blocks.
    pub fn release_before(&mut self, index: usize) {
        let index = index.min(self.blocks.len());
        if index <= self.released {
            return;
        }
        if let Some(pool) = &self.pool {
            lock(pool).release_slid_out(&self.blocks[self.released..index]);
        }
        self.blocks[self.released..index].fill(RELEASED_BLOCK);
        self.released = index;
    }

    /// Gives back the blocks of entries `len..`, keeping the first `len`.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.blocks.len() {
            return;
        }
        let from = len.max(self.released);
        if let Some(pool) = &self.pool {
            lock(pool).release_all(&self.blocks[from..]);
        }
        self.blocks.truncate(len);
        self.released = self.released.min(len);
    }

    /// Blocks this table holds (entries not given back).
    pub fn held(&self) -> usize {
        self.blocks.len() - self.released
    }

    /// Leading entries given back ([`RELEASED_BLOCK`]).
    pub fn released(&self) -> usize {
        self.released
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
            never_used: num_blocks,
            slid_out: BTreeMap::new(),
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

    /// Blocks handed out at least once (the others' memory was never touched).
    pub fn blocks_ever_used(&self) -> usize {
        let pool = self.pool();
        pool.ref_count.len() - pool.never_used
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
        (BlockTable { blocks, released: 0, pool: Some(Arc::clone(&self.pool)) }, last)
    }

    /// A table whose first `released` entries are [`RELEASED_BLOCK`], followed by a reference
    /// to each block cached (by [`Self::register_window_block`]) as one of `blocks`. Unless
    /// every one is cached, nothing is taken and the error is the index in `blocks` of the
    /// first that is not. How a sliding-window pool serves a prefix-cache hit: only the blocks
    /// inside the window before the reuse point are needed.
    pub fn acquire_window(&self, released: usize, blocks: &[CachedContents<'_>]) -> Result<BlockTable, usize> {
        let found = self.pool().acquire_all(blocks)?;
        let mut blocks = vec![RELEASED_BLOCK; released];
        blocks.extend(found);
        Ok(BlockTable { blocks, released, pool: Some(Arc::clone(&self.pool)) })
    }

    /// Registers the full, computed block `table[index]` of a sliding-window table under its
    /// chained hash (its `tokens` follow a block with hash `parent`), without linking it to its
    /// parent: the parent may already be given back. Such blocks are found by hash
    /// ([`Self::acquire_window`]), never by walking a chain, so each is evictable on its own,
    /// least recently used first.
    pub fn register_window_block(&self, table: &BlockTable, index: usize, parent: Option<BlockHash>, tokens: &[u32]) {
        self.pool().register_unchained(table[index], parent, tokens);
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
    /// The bottom `never_used` entries of `free` were never handed out (blocks returned are
    /// pushed above them).
    never_used: usize,
    /// Idle cached blocks a sliding-window table gave back as they left its window
    /// ([`BlockTable::release_before`]), by last use: reused before any never-used block.
    slid_out: BTreeMap<u64, u32>,
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
            let block = self.take_block();
            self.ref_count[block as usize] = 1;
            blocks.push(block);
        }
        Ok(())
    }

    /// The next block to hand out: a free block used before, then a cached block that slid
    /// out of a window, then a never-used block, then the least recently used cached block.
    /// `available()` must be positive.
    fn take_block(&mut self) -> u32 {
        let used_before_is_free = self.free.len() > self.never_used;
        if !used_before_is_free {
            if let Some((_, block)) = self.slid_out.pop_first() {
                return self.reclaim(block);
            }
        }
        match self.free.pop() {
            Some(block) => {
                self.never_used = self.never_used.min(self.free.len());
                block
            }
            None => self.evict_one(),
        }
    }

    /// Reclaims the least recently used cached leaf. Only called when no block is free and
    /// `available()` said an idle cached block exists, so a leaf exists too: the subtree of an
    /// idle cached block is idle (see [`BlockAllocator`]), and its deepest block is a leaf.
    fn evict_one(&mut self) -> u32 {
        let oldest_slid_out = self.slid_out.first_key_value().map(|(&k, _)| k);
        let oldest_other = self.evictable.first_key_value().map(|(&k, _)| k);
        let order = match (oldest_slid_out, oldest_other) {
            (Some(s), Some(o)) if s < o => &mut self.slid_out,
            (Some(_), None) => &mut self.slid_out,
            _ => &mut self.evictable,
        };
        let Some((_, block)) = order.pop_first() else {
            unreachable!("an idle cached block always has an idle cached leaf")
        };
        self.reclaim(block)
    }

    /// Takes an idle cached block out of the cache to hand it out.
    fn reclaim(&mut self, block: u32) -> u32 {
        self.idle_cached -= 1;
        self.forget(block);
        block
    }

    /// Drops one reference to each block of a table.
    fn release_all(&mut self, table: &[u32]) {
        for &block in table {
            self.release(block, false);
        }
    }

    /// Drops one reference to each block that slid out of a sliding-window table's window.
    fn release_slid_out(&mut self, blocks: &[u32]) {
        for &block in blocks {
            self.release(block, true);
        }
    }

    /// Drops one reference to `block`. The last reference returns it to the free stack, or
    /// keeps it as an idle cached block when its contents are registered (first in line for
    /// reuse if it `slid_out` of a window).
    fn release(&mut self, block: u32, slid_out: bool) {
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
            let order = if slid_out { &mut self.slid_out } else { &mut self.evictable };
            order.insert(self.clock, block);
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
            self.cached[b] = Some(CachedBlock { hash, parent, tokens: tokens.into(), chained: true });
            self.by_hash.insert(hash, block);
            if let Some(p) = parent_block {
                self.cached_children[p as usize] += 1;
            }
        }
        hash
    }

    fn register_unchained(&mut self, block: u32, parent: Option<BlockHash>, tokens: &[u32]) {
        debug_assert_eq!(tokens.len(), self.block_size);
        let hash = block_hash(parent, tokens);
        let b = block as usize;
        if self.cached[b].is_none() && !self.by_hash.contains_key(&hash) {
            self.cached[b] = Some(CachedBlock { hash, parent, tokens: tokens.into(), chained: false });
            self.by_hash.insert(hash, block);
        }
    }

    /// The block cached with exactly these contents, if any.
    fn lookup(&self, hash: BlockHash, parent: Option<BlockHash>, tokens: &[u32]) -> Option<u32> {
        let &block = self.by_hash.get(&hash)?;
        let entry = self.cached[block as usize].as_ref()?;
        // Guard against a 64-bit hash collision: the contents must really match.
        (entry.parent == parent && &*entry.tokens == tokens).then_some(block)
    }

    /// Takes a reference to a cached block (out of the eviction order if it was idle).
    fn take_reference(&mut self, block: u32) {
        let b = block as usize;
        if self.ref_count[b] == 0 {
            self.idle_cached -= 1;
            let key = self.last_use[b];
            if self.evictable.remove(&key).is_none() {
                self.slid_out.remove(&key);
            }
        }
        self.ref_count[b] += 1;
    }

    /// A reference to each cached block of `blocks`, or none (and the index of the first
    /// missing one) unless all are cached.
    fn acquire_all(&mut self, blocks: &[CachedContents<'_>]) -> Result<Vec<u32>, usize> {
        let found = blocks
            .iter()
            .enumerate()
            .map(|(i, c)| self.lookup(c.hash, c.parent, c.tokens).ok_or(i))
            .collect::<Result<Vec<u32>, usize>>()?;
        for &block in &found {
            self.take_reference(block);
        }
        Ok(found)
    }

    fn acquire_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, Option<BlockHash>) {
        let mut blocks = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = block_hash(parent, chunk);
            let Some(block) = self.lookup(hash, parent, chunk) else { break };
            self.take_reference(block);
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
        if !entry.chained {
            return;
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
    fn released_entries_keep_their_place_and_their_blocks_go_back_once() {
        let a = BlockAllocator::new(6, 2);
        let mut table = take(&a, 5);
        let kept = table[3..].to_vec();
        table.release_before(3);
        assert_eq!(&table[..3], &[RELEASED_BLOCK; 3]);
        assert_eq!(&table[3..], &kept[..]);
        assert_eq!((table.len(), table.held(), table.released()), (5, 2, 3));
        assert_eq!(a.free_blocks(), 4);
        // Releasing less, or the same, again gives nothing back twice.
        table.release_before(2);
        table.release_before(3);
        assert_eq!(a.free_blocks(), 4);
        // Growing keeps the indexing: the new block is entry 5.
        a.allocate_into(&mut table, 1).unwrap();
        assert_eq!((table.len(), table.held()), (6, 3));
        table.truncate(4);
        assert_eq!((table.len(), table.held(), a.free_blocks()), (4, 1, 5));
        drop(table);
        assert_eq!(a.free_blocks(), 6);
    }

    /// A sequence walking `steps` blocks of 2 tokens while holding at most `window` of them
    /// (each block registered as the sliding pool does), on `a`: its table and its tokens'
    /// block contents.
    fn walk_a_window(a: &BlockAllocator, steps: usize, window: usize) -> (BlockTable, Vec<CachedContents<'static>>) {
        let tokens: &'static [u32] = Vec::leak((0..2 * steps as u32).collect());
        let contents = prefix_contents(tokens, 2, steps);
        let mut table = BlockTable::new();
        for (i, c) in contents.iter().enumerate() {
            a.allocate_into(&mut table, 1).unwrap();
            a.register_window_block(&table, i, c.parent, c.tokens);
            table.release_before((i + 1).saturating_sub(window));
            assert!(table.held() <= window);
        }
        (table, contents)
    }

    #[test]
    fn a_walking_window_reuses_its_slid_out_blocks_and_a_finished_window_stays_cached() {
        let a = BlockAllocator::new(64, 2);
        let (table, contents) = walk_a_window(&a, 100, 3);
        // Three held, the fourth allocation found nothing slid out yet; from then on each new
        // block is the least recently slid-out one: 60 blocks were never touched.
        assert_eq!(a.blocks_ever_used(), 4);
        // A finished sequence's window is kept like any cached prefix: new blocks come from
        // what slid out (one block left), then from the never-used ones while there are some.
        let window = table[97..].to_vec();
        drop(table);
        let other = take(&a, 10);
        assert_eq!(a.blocks_ever_used(), 4 + 9);
        let reused = a.acquire_window(97, &contents[97..100]).expect("the finished window is still cached");
        assert_eq!(&reused[97..], &window[..]);
        drop((other, reused));
        assert_eq!(take(&a, 64).len(), 64, "every idle block can be handed out again");
    }

    #[test]
    fn window_blocks_are_found_by_hash_all_or_nothing_and_evicted_alone() {
        let a = BlockAllocator::new(4, 2);
        let prompt = [1, 2, 3, 4, 5, 6];
        let contents = prefix_contents(&prompt, 2, 3);
        let mut table = take(&a, 3);
        for (i, c) in contents.iter().enumerate() {
            a.register_window_block(&table, i, c.parent, c.tokens);
        }
        let blocks = table.to_vec();
        // The first block slid out of the window: given back, still cached.
        table.release_before(1);
        let reused = a.acquire_window(1, &contents[1..3]).expect("both window blocks are cached");
        assert_eq!(&reused[..], &[RELEASED_BLOCK, blocks[1], blocks[2]]);
        assert_eq!(reused.held(), 2);
        drop((table, reused));
        assert_eq!(a.available(), 4);

        // Two new blocks: the free one, then the least recently used cached block, the first
        // one (released first), though the others name it as their parent.
        let other = take(&a, 2);
        assert!(other.contains(&blocks[0]), "evicted {other:?}, cached {blocks:?}");
        assert_eq!(a.acquire_window(0, &contents[..2]).err(), Some(0), "the missing block is named");
        let tail = a.acquire_window(1, &contents[1..]).expect("the rest is still cached");
        // A different token in a block is a miss, not a hash hit.
        let mut wrong = contents[2];
        wrong.tokens = &[5, 7];
        assert_eq!(a.acquire_window(2, &[wrong]).err(), Some(0));
        drop((other, tail));
        assert_eq!(take(&a, 4).len(), 4, "every idle block can be handed out again");
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
