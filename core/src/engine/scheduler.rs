//! Continuous batching: which sequences run in the next forward step, and how many of their
//! tokens.
//!
//! Every step, running sequences are served oldest first (priority, then arrival): a decode
//! token each, or the next chunk of a prompt, all under one token budget. Then waiting
//! sequences are admitted, highest priority first, while there is budget, a running slot and
//! KV space; an admitted prompt first reuses whatever full blocks of it the prefix cache holds.
//! When a running sequence needs a block and none is left, the newest running sequence is
//! preempted: its blocks are released (its full blocks stay in the prefix cache) and it goes
//! back to the queue, to resume later by recomputing — nothing it generated is lost.
//!
//! Sequences own their blocks (a [`crate::engine::block_allocator::BlockTable`]): whatever removes a
//! sequence from here, its blocks go back to the allocator when it is dropped.
//!
//! A model with sliding-window layers has a second block pool for them ([`SlidingPool`]):
//! each sequence holds a second table whose blocks before the window of its next position are
//! given back as it advances, so a long sequence holds about `window / block_size` sliding
//! blocks however long it grows. Admission and growth need room in both pools.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use super::block_allocator::{prefix_contents, BlockAllocator, BlockHash, BlockTable, OutOfBlocks};
use super::sequence::{ComputedTokens, Sequence};
use super::step_budget::{StepBudget, StepDecodes};

/// The block pool of sliding-window layers, and their window.
pub(crate) struct SlidingPool {
    pub allocator: BlockAllocator,
    /// Positions a sliding layer attends to, the query's own included.
    pub window: usize,
}

impl SlidingPool {
    /// The first block a sequence still needs when its next position to compute is `next`:
    /// that position attends from `next + 1 - window`, and every later position from later.
    pub fn first_needed_block(&self, next: usize) -> usize {
        (next + 1).saturating_sub(self.window) / self.allocator.block_size()
    }

    /// Gives back the sliding blocks `seq` no longer needs.
    fn release_slid_out(&self, seq: &mut Sequence) {
        seq.sliding_blocks.release_before(self.first_needed_block(seq.computed));
    }

    /// Of a prefix-cache hit of `global` blocks of `tokens`, the longest leading part whose
    /// sliding blocks (those inside the window before the reuse point) are all still cached
    /// in this pool, with a table holding them. The global blocks past that part are given
    /// back: reusing them without the sliding layers' K/V would need a recompute that writes
    /// into shared blocks, so those positions are recomputed instead.
    fn reuse(&self, tokens: &[u32], mut global: BlockTable) -> (BlockTable, Option<BlockHash>, BlockTable) {
        let block_size = self.allocator.block_size();
        let contents = prefix_contents(tokens, block_size, global.len());
        let mut usable = contents.len();
        while usable > 0 {
            let first = self.first_needed_block(usable * block_size);
            match self.allocator.acquire_window(first, &contents[first..usable]) {
                Ok(sliding) => {
                    global.truncate(usable);
                    return (global, Some(contents[usable - 1].hash), sliding);
                }
                // Every shorter reuse whose window still covers the missing block fails too.
                Err(missing) => usable = first + missing,
            }
        }
        global.release();
        (global, None, BlockTable::new())
    }
}

/// Blocks `seq` needs in each pool to hold positions `..end`.
fn blocks_needed(
    allocator: &BlockAllocator,
    sliding: Option<&SlidingPool>,
    seq: &Sequence,
    end: usize,
) -> (usize, usize) {
    let global = allocator.blocks_for(end).saturating_sub(seq.blocks.len());
    // A sliding table keeps an entry (maybe given back) for every block before its end.
    let sliding = sliding.map_or(0, |p| p.allocator.blocks_for(end).saturating_sub(seq.sliding_blocks.len()));
    (global, sliding)
}

/// Whether both pools can hand out `needed` blocks now.
fn room_for(allocator: &BlockAllocator, sliding: Option<&SlidingPool>, needed: (usize, usize)) -> bool {
    allocator.available() >= needed.0 && sliding.is_none_or(|p| p.allocator.available() >= needed.1)
}

/// Adds `needed` blocks to each of `seq`'s tables, all or nothing.
fn allocate(
    allocator: &BlockAllocator,
    sliding: Option<&SlidingPool>,
    seq: &mut Sequence,
    needed: (usize, usize),
) -> Result<(), OutOfBlocks> {
    let held = seq.blocks.len();
    allocator.allocate_into(&mut seq.blocks, needed.0)?;
    if let Some(pool) = sliding {
        if let Err(e) = pool.allocator.allocate_into(&mut seq.sliding_blocks, needed.1) {
            seq.blocks.truncate(held);
            return Err(e);
        }
    }
    Ok(())
}

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerConfig {
    pub max_running: usize,
    /// Most prompt (prefill) tokens in one step, whatever the budget.
    pub max_prefill_tokens: usize,
}

/// Which running sequences a pass over them serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Those with one sampled token to run.
    Decodes,
    /// Those with prompt (or recompute) tokens to run.
    Prompts,
}

/// One sequence's share of a step: tokens `start .. start + len` of `running[index]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScheduledChunk {
    pub index: usize,
    pub start: usize,
    pub len: usize,
    /// The chunk ends at the sequence's last token: its logits give the next token.
    pub want_logits: bool,
}

/// What a step's planning did besides the plan itself (for metrics and finishing).
#[derive(Default)]
pub(crate) struct PlanReport {
    pub preempted: usize,
    /// Prompt tokens served from the prefix cache to sequences admitted in this step (each
    /// prompt position of a sequence counts once, see [`Sequence::note_cache_reuse`]).
    pub prefix_hit_tokens: usize,
    /// Sequences that cannot grow even alone (the cache is full): they must finish.
    pub out_of_space: Vec<Sequence>,
    /// Tokens the step could compute: its decodes plus the prompt tokens granted beside them.
    pub token_budget: usize,
    /// The step's decodes, and how many of them the budget's latency rule protected.
    pub decodes: StepDecodes,
}

/// Waiting sequences ordered by priority (highest first), then arrival (earliest first).
struct Queued(Sequence);

impl Queued {
    fn key(&self) -> (i32, Reverse<u64>) {
        (self.0.priority, Reverse(self.0.arrival))
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

pub(crate) struct Scheduler {
    config: SchedulerConfig,
    waiting: BinaryHeap<Queued>,
    pub running: Vec<Sequence>,
    pub allocator: BlockAllocator,
    /// The sliding-window layers' pool, for models that have such layers.
    pub sliding: Option<SlidingPool>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, allocator: BlockAllocator) -> Self {
        Self { config, waiting: BinaryHeap::new(), running: Vec::new(), allocator, sliding: None }
    }

    /// The same scheduler with a second pool for sliding-window layers.
    pub fn with_sliding_pool(self, sliding: SlidingPool) -> Self {
        Self { sliding: Some(sliding), ..self }
    }

    pub fn enqueue(&mut self, seq: Sequence) {
        self.waiting.push(Queued(seq));
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Removes every sequence (waiting or running) that `should_remove` selects; each keeps
    /// its blocks until it is finished or dropped. Runs every step (cancellation), so the
    /// waiting heap is only rebuilt when one of its sequences is actually removed.
    pub fn remove_where(&mut self, mut should_remove: impl FnMut(&Sequence) -> bool) -> Vec<Sequence> {
        let mut removed: Vec<Sequence> = self.running.extract_if(.., |seq| should_remove(seq)).collect();
        if self.waiting.iter().any(|Queued(seq)| should_remove(seq)) {
            for Queued(seq) in std::mem::take(&mut self.waiting).into_vec() {
                if should_remove(&seq) {
                    removed.push(seq);
                } else {
                    self.waiting.push(Queued(seq));
                }
            }
        }
        removed
    }

    /// Plans the next step into `plan` (cleared first) under `budget`. Returned chunks index
    /// into `self.running`, which this call may reorder, shrink (preemption) and grow
    /// (admission).
    ///
    /// Every running decode is in every step (vLLM-style chunked prefill): a stream's
    /// inter-token latency is one step, however long the prompts beside it. The prompt tokens
    /// the budget grants beside those decodes (at most `max_prefill_tokens`) go to prompt
    /// chunks: newly admitted prompts first, then the next chunks of prompts already started,
    /// oldest first. So a request that arrives while a long prompt is prefilled waits for the
    /// step in flight, not for the whole prefill (a started prompt loses at most one step's
    /// chunk to each arrival, which runs behind it from then on). The engine's budget sizes
    /// the chunks so that a step takes about its target time when it carries decodes of
    /// streams that were streaming before the waiting prompts arrived, else grants the whole
    /// budget (a burst of arrivals, see [`Self::protected_decodes`]); each step's prompts that
    /// complete sample their first token right away.
    pub fn schedule_into(&mut self, plan: &mut Vec<ScheduledChunk>, budget: &StepBudget) -> PlanReport {
        let mut report = PlanReport::default();
        plan.clear();
        self.running.sort_by_key(|s| (Reverse(s.priority), s.arrival));
        for seq in &mut self.running {
            seq.scheduled_this_step = false;
        }
        // Decodes are not limited by the budget: every one of them runs.
        let mut unlimited = usize::MAX;
        self.schedule_running(plan, Phase::Decodes, &mut unlimited, &mut report);
        let decodes = plan.len();
        report.decodes = StepDecodes { total: decodes, protected: self.protected_decodes(plan) };
        let mut prefill = budget.prompt_tokens(report.decodes).min(self.config.max_prefill_tokens);
        report.token_budget = decodes + prefill;
        self.admit(plan, &mut prefill, decodes, &mut report);
        self.schedule_running(plan, Phase::Prompts, &mut prefill, &mut report);
        report
    }

    /// How many of the decodes in `plan` (all it holds so far) the step budget's latency rule
    /// protects: those of streams that had their first token before the oldest prompt still
    /// waiting for its own was submitted (all of them when no prompt waits). A stream that got
    /// its first token after that is part of the same burst of arrivals: its first tokens'
    /// latency is not worth the waiting users' time to first token (see
    /// [`crate::engine::step_budget`]), while streams already flowing when a long prompt
    /// arrives keep their inter-token latency within the budget's rule.
    fn protected_decodes(&self, plan: &[ScheduledChunk]) -> usize {
        let Some(burst_start) = self.oldest_prompt_awaiting_first_token() else { return plan.len() };
        plan.iter().filter(|c| self.running[c.index].first_token.is_some_and(|t| t < burst_start)).count()
    }

    /// When the oldest prompt without a first token that this step could serve was submitted:
    /// running, or waiting while a running slot is free. Preempted sequences that had streamed
    /// already are not a burst's prompts.
    fn oldest_prompt_awaiting_first_token(&self) -> Option<Instant> {
        let waiting =
            self.waiting.iter().map(|Queued(seq)| seq).filter(|_| self.running.len() < self.config.max_running);
        self.running.iter().chain(waiting).filter(|seq| seq.first_token.is_none()).map(|seq| seq.submitted).min()
    }

    /// Plans the next step with no budget but the configured prompt limits (allocating; the
    /// engine uses [`Self::schedule_into`]).
    #[cfg(test)]
    pub fn schedule(&mut self) -> (Vec<ScheduledChunk>, PlanReport) {
        let mut plan = Vec::new();
        let report = self.schedule_into(&mut plan, &StepBudget::fixed(usize::MAX));
        (plan, report)
    }

    /// Serves the running sequences of `phase` in order (each at most once per step): a
    /// decode token each, or the next chunk of its prompt out of `allowance` tokens.
    fn schedule_running(
        &mut self,
        plan: &mut Vec<ScheduledChunk>,
        phase: Phase,
        allowance: &mut usize,
        report: &mut PlanReport,
    ) {
        let mut i = 0;
        while i < self.running.len() && *allowance > 0 {
            let seq = &mut self.running[i];
            let decoding = seq.is_decoding();
            if seq.scheduled_this_step || decoding != (phase == Phase::Decodes) {
                i += 1;
                continue;
            }
            let len = if decoding { 1 } else { seq.pending().min(*allowance) };
            let needed = blocks_needed(&self.allocator, self.sliding.as_ref(), seq, seq.computed + len);
            // Make room by preempting the newest sequences behind this one (not those already
            // in this step's plan).
            while !room_for(&self.allocator, self.sliding.as_ref(), needed)
                && self.running.len() > i + 1
                && self.running.last().is_some_and(|s| !s.scheduled_this_step)
            {
                if let Some(victim) = self.running.pop() {
                    log_preemption(&victim, &self.allocator);
                    self.preempt(victim);
                    report.preempted += 1;
                }
            }
            if allocate(&self.allocator, self.sliding.as_ref(), &mut self.running[i], needed).is_err() {
                let seq = self.running.remove(i);
                if self.running.is_empty() && plan.is_empty() {
                    // Alone and still no room: the whole cache cannot hold it.
                    report.out_of_space.push(seq);
                } else {
                    log_preemption(&seq, &self.allocator);
                    self.preempt(seq);
                    report.preempted += 1;
                }
                // Plan entries after `i` shifted down by one.
                for chunk in plan.iter_mut().filter(|c| c.index > i) {
                    chunk.index -= 1;
                }
                continue;
            }
            let seq = &mut self.running[i];
            seq.scheduled_this_step = true;
            let start = seq.computed;
            plan.push(ScheduledChunk { index: i, start, len, want_logits: start + len == seq.tokens.len() });
            *allowance -= len;
            i += 1;
        }
    }

    /// Admits waiting sequences (highest priority, then earliest) while there are `prefill`
    /// tokens left, a running slot and KV space. The first `decodes` chunks of `plan` are
    /// decodes, the rest prompt chunks.
    fn admit(&mut self, plan: &mut Vec<ScheduledChunk>, prefill: &mut usize, decodes: usize, report: &mut PlanReport) {
        let block_size = self.allocator.block_size();
        while self.running.len() < self.config.max_running && *prefill > 0 {
            let Some(Queued(mut seq)) = self.waiting.pop() else { break };
            if seq.blocks.is_empty() {
                // Reuse cached full blocks of the prompt, but always leave the last token to
                // compute: its logits are what the next token is sampled from.
                let max_blocks = (seq.tokens.len() - 1) / block_size;
                let (mut blocks, mut last_hash) = self.allocator.acquire_prefix(&seq.tokens, max_blocks);
                // Sliding layers need the window before the reuse point too (maybe less reuse).
                if let Some(sliding) = &self.sliding {
                    (blocks, last_hash, seq.sliding_blocks) = sliding.reuse(&seq.tokens, blocks);
                }
                seq.computed = blocks.len() * block_size;
                seq.registered_blocks = blocks.len();
                seq.last_block_hash = last_hash;
                seq.blocks = blocks;
            }
            let len = seq.pending().min(*prefill);
            // A prompt that would only partly fit after other prompts waits for the next step:
            // its first token comes no later, and those of the whole prompts in this step sooner.
            let partial_after_others = len < seq.pending() && plan.len() > decodes;
            let needed = blocks_needed(&self.allocator, self.sliding.as_ref(), &seq, seq.computed + len);
            if partial_after_others || allocate(&self.allocator, self.sliding.as_ref(), &mut seq, needed).is_err() {
                // Not now: give the prefix blocks back (they stay cached) and keep its place.
                self.preempt(seq);
                break;
            }
            // Counted only now that it is admitted: a prompt that goes back to wait is
            // offered its cached prefix again next time.
            report.prefix_hit_tokens += seq.note_cache_reuse();
            if seq.first_scheduled.is_none() {
                seq.first_scheduled = Some(std::time::Instant::now());
                tracing::debug!(target: "cortexstream::request", parent: &seq.span, cached_prompt_tokens = seq.cached_prompt_tokens, "prefill start");
            }
            // It left the queue: its place there is free for the next submitter.
            seq.queue_slot = None;
            seq.scheduled_this_step = true;
            self.running.push(seq);
            let index = self.running.len() - 1;
            let seq = &self.running[index];
            plan.push(ScheduledChunk {
                index,
                start: seq.computed,
                len,
                want_logits: seq.computed + len == seq.tokens.len(),
            });
            *prefill -= len;
        }
    }

    /// Records that the planned chunks went through the model: advances `computed`,
    /// registers newly completed blocks in the prefix cache (in both pools) and gives back the
    /// sliding blocks that fell out of the window. Returns what the step computed, for the
    /// token counters.
    pub fn mark_computed(&mut self, plan: &[ScheduledChunk]) -> ComputedTokens {
        let block_size = self.allocator.block_size();
        let mut work = ComputedTokens::default();
        for chunk in plan {
            let seq = &mut self.running[chunk.index];
            work += seq.note_computed(chunk.start, chunk.len);
            seq.computed = chunk.start + chunk.len;
            while (seq.registered_blocks + 1) * block_size <= seq.computed {
                let r = seq.registered_blocks;
                let tokens = &seq.tokens[r * block_size..(r + 1) * block_size];
                let parent = seq.last_block_hash;
                let hash = self.allocator.register_full_block(&seq.blocks, r, parent, tokens);
                if let Some(sliding) = &self.sliding {
                    // Just computed, so still held: blocks are given back only below.
                    if r >= seq.sliding_blocks.released() {
                        sliding.allocator.register_window_block(&seq.sliding_blocks, r, parent, tokens);
                    }
                }
                seq.last_block_hash = Some(hash);
                seq.registered_blocks += 1;
            }
            if let Some(sliding) = &self.sliding {
                sliding.release_slid_out(seq);
            }
        }
        work
    }

    /// Sends a sequence back to the queue, releasing its blocks; it will recompute its
    /// tokens (mostly from the prefix cache) when readmitted.
    fn preempt(&mut self, mut seq: Sequence) {
        seq.blocks.release();
        seq.sliding_blocks.release();
        seq.computed = 0;
        seq.registered_blocks = 0;
        seq.last_block_hash = None;
        seq.scheduled_this_step = false;
        self.waiting.push(Queued(seq));
    }
}

/// A running sequence loses its KV blocks for lack of room (it resumes later).
fn log_preemption(seq: &Sequence, allocator: &BlockAllocator) {
    tracing::info!(
        target: "cortexstream::request",
        parent: &seq.span,
        tokens = seq.tokens.len(),
        free_blocks = allocator.available(),
        "preempted: KV cache full, will recompute"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detokenize::StreamingText;
    use crate::engine::sequence::EventSink;
    use crate::request::SamplingParams;
    use crate::sampling::Sampler;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn seq(id: u64, priority: i32, prompt: Vec<u32>) -> Sequence {
        let (tx, _rx) = crossbeam_channel::unbounded();
        Sequence {
            id,
            priority,
            arrival: id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            covered: 0,
            blocks: Default::default(),
            sliding_blocks: Default::default(),
            queue_slot: None,
            registered_blocks: 0,
            last_block_hash: None,
            max_new_tokens: 100,
            sampler: Sampler::new(SamplingParams::greedy()),
            constraint: None,
            text: StreamingText::new(vec![]),
            stop_ids: Default::default(),
            sink: EventSink::Channel(tx),
            cancel: Arc::new(AtomicBool::new(false)),
            cached_prompt_tokens: 0,
            submitted: std::time::Instant::now(),
            first_scheduled: None,
            span: tracing::Span::none(),
            first_token: None,
            last_token: None,
            scheduled_this_step: false,
        }
    }

    fn scheduler(max_running: usize, budget: usize, blocks: usize) -> Scheduler {
        let config = SchedulerConfig { max_running, max_prefill_tokens: budget };
        Scheduler::new(config, BlockAllocator::new(blocks, 4))
    }

    /// Blocks of 4 slots, `sliding_blocks` of them for sliding layers with `window`.
    fn sliding_scheduler(budget: usize, blocks: usize, sliding_blocks: usize, window: usize) -> Scheduler {
        let sliding = SlidingPool { allocator: BlockAllocator::new(sliding_blocks, 4), window };
        scheduler(4, budget, blocks).with_sliding_pool(sliding)
    }

    fn sliding_available(s: &Scheduler) -> usize {
        s.sliding.as_ref().map_or(0, |p| p.allocator.available())
    }

    /// Runs a step as the engine would, sampling token 7 for every chunk that wants logits.
    fn step(s: &mut Scheduler) -> Vec<ScheduledChunk> {
        step_within(s, usize::MAX)
    }

    /// [`step`] under a budget of `budget` tokens.
    fn step_within(s: &mut Scheduler, budget: usize) -> Vec<ScheduledChunk> {
        step_counting(s, budget).0
    }

    /// [`step_within`], also returning the step's prefix-cache hits and computed tokens.
    fn step_counting(s: &mut Scheduler, budget: usize) -> (Vec<ScheduledChunk>, usize, ComputedTokens) {
        let mut plan = Vec::new();
        let report = s.schedule_into(&mut plan, &StepBudget::fixed(budget));
        assert!(report.out_of_space.is_empty());
        let computed = s.mark_computed(&plan);
        for c in &plan {
            if c.want_logits {
                s.running[c.index].tokens.push(7);
            }
        }
        (plan, report.prefix_hit_tokens, computed)
    }

    #[test]
    fn a_cached_prompt_sent_back_to_wait_counts_its_hits_once() {
        let mut s = scheduler(4, 100, 32);
        // Its prompt fills and registers blocks 0..4 and 4..8.
        s.enqueue(seq(1, 0, (0..10).collect()));
        step(&mut s);
        // A short new prompt, then one reusing those 8 tokens with 20 more to compute.
        s.enqueue(seq(2, 0, (100..106).collect()));
        s.enqueue(seq(3, 0, (0..8).chain(200..220).collect()));
        let mut hits = 0;
        let mut prompt_computed = 0;
        for _ in 0..8 {
            let (_, step_hits, computed) = step_counting(&mut s, 10);
            hits += step_hits;
            prompt_computed += computed.prompt;
        }
        let third = s.running.iter().find(|q| q.id == 3).expect("admitted");
        assert!(third.computed >= third.prompt_len, "its prompt was consumed");
        assert_eq!(third.cached_prompt_tokens, 8);
        assert_eq!(hits, 8, "the hits of the prompt that waited a step were counted again");
        assert_eq!(hits + prompt_computed, 6 + 28, "hits + first-time prompt tokens = prompt tokens");
    }

    #[test]
    fn positions_computed_again_after_a_preemption_are_recomputation_not_prefill() {
        let mut q = seq(1, 0, (0..10).collect());
        q.computed = 4; // admitted with one cached block
        assert_eq!(q.note_cache_reuse(), 4);
        assert_eq!(q.note_computed(4, 6), ComputedTokens { prompt: 6, recomputed: 0 });
        q.tokens.extend([7, 8]);
        assert_eq!(q.note_computed(10, 1), ComputedTokens::default(), "a decode is neither");
        // Preempted; readmitted with its first 8 positions cached: not hits a second time.
        q.computed = 8;
        assert_eq!(q.note_cache_reuse(), 0);
        assert_eq!(q.note_computed(8, 4), ComputedTokens { prompt: 0, recomputed: 3 }, "8..11 again, 11 new");
        assert_eq!(q.cached_prompt_tokens, 4);
    }

    #[test]
    fn prompt_positions_first_served_by_the_cache_after_a_preemption_are_hits() {
        // Preempted halfway through its prompt; meanwhile another sequence cached all of it.
        let mut q = seq(1, 0, (0..20).collect());
        assert_eq!(q.note_computed(0, 8), ComputedTokens { prompt: 8, recomputed: 0 });
        q.computed = 16;
        assert_eq!(q.note_cache_reuse(), 8);
        assert_eq!(q.note_computed(16, 4), ComputedTokens { prompt: 4, recomputed: 0 });
        assert_eq!(q.cached_prompt_tokens + 8 + 4, 20);
    }

    #[test]
    fn prefill_is_chunked_under_the_budget_then_decodes() {
        let mut s = scheduler(4, 5, 16);
        s.enqueue(seq(1, 0, (0..12).collect()));
        assert_eq!(step(&mut s), vec![ScheduledChunk { index: 0, start: 0, len: 5, want_logits: false }]);
        assert_eq!(step(&mut s), vec![ScheduledChunk { index: 0, start: 5, len: 5, want_logits: false }]);
        assert_eq!(step(&mut s), vec![ScheduledChunk { index: 0, start: 10, len: 2, want_logits: true }]);
        assert_eq!(step(&mut s), vec![ScheduledChunk { index: 0, start: 12, len: 1, want_logits: true }]);
    }

    #[test]
    fn priority_then_arrival_and_running_limit() {
        let mut s = scheduler(2, 100, 16);
        s.enqueue(seq(1, 0, vec![1, 2]));
        s.enqueue(seq(2, 5, vec![1, 2]));
        s.enqueue(seq(3, 0, vec![1, 2]));
        step(&mut s);
        let ids: Vec<u64> = s.running.iter().map(|q| q.id).collect();
        assert_eq!(ids, vec![2, 1]);
        assert_eq!(s.waiting_len(), 1);
    }

    #[test]
    fn shared_prompt_prefix_skips_prefill() {
        let mut s = scheduler(4, 100, 16);
        let prompt: Vec<u32> = (0..10).collect();
        s.enqueue(seq(1, 0, prompt.clone()));
        step(&mut s);
        s.enqueue(seq(2, 0, prompt.clone()));
        let (plan, report) = s.schedule();
        // Two full blocks (8 tokens) came from the cache; only 2 tokens are computed.
        assert_eq!(report.prefix_hit_tokens, 8);
        assert!(plan.contains(&ScheduledChunk { index: 1, start: 8, len: 2, want_logits: true }));
    }

    #[test]
    fn newest_is_preempted_when_blocks_run_out_and_resumes_later() {
        // 4 blocks of 4 slots; two sequences of 8 tokens take 2 blocks each.
        let mut s = scheduler(4, 100, 4);
        s.enqueue(seq(1, 0, (0..8).collect()));
        s.enqueue(seq(2, 0, (100..108).collect()));
        step(&mut s); // both prefilled, each now 9 tokens (8 + sampled)
        assert_eq!(s.running.len(), 2);
        // Next decode needs a third block for each: the newest (2) is preempted.
        let (plan, report) = s.schedule();
        assert_eq!(report.preempted, 1);
        assert_eq!(s.running.len(), 1);
        assert_eq!(s.running[0].id, 1);
        assert_eq!(plan.len(), 1);
        s.mark_computed(&plan);
        // Finish sequence 1 (dropping it frees its blocks) and 2 resumes, generated token intact.
        assert_eq!(s.remove_where(|q| q.id == 1).len(), 1);
        let (plan, _) = s.schedule();
        assert_eq!(s.running[0].id, 2);
        assert_eq!(s.running[0].tokens.len(), 9);
        assert!(plan[0].want_logits);
    }

    /// Which running sequences decode (one token at the end of their tokens) in `plan`.
    fn decoding_ids(s: &Scheduler, plan: &[ScheduledChunk]) -> Vec<u64> {
        plan.iter()
            .filter(|c| c.len == 1 && c.start >= s.running[c.index].prompt_len)
            .map(|c| s.running[c.index].id)
            .collect()
    }

    /// The config of the tests below: at most `max_prefill` prompt tokens a step.
    fn chunked(max_running: usize, max_prefill: usize, blocks: usize) -> Scheduler {
        let config = SchedulerConfig { max_running, max_prefill_tokens: max_prefill };
        Scheduler::new(config, BlockAllocator::new(blocks, 4))
    }

    /// `(id, tokens)` of every chunk in `plan`, in plan order.
    fn shares(s: &Scheduler, plan: &[ScheduledChunk]) -> Vec<(u64, usize)> {
        plan.iter().map(|c| (s.running[c.index].id, c.len)).collect()
    }

    /// [`shares`] of a step under `budget`.
    fn step_shares(s: &mut Scheduler, budget: usize) -> Vec<(u64, usize)> {
        let plan = step_within(s, budget);
        shares(s, &plan)
    }

    #[test]
    fn every_running_decode_is_in_every_step_while_a_2k_prompt_prefills() {
        // 8 streams decoding; a 2048-token prompt arrives. The budget changes every step (as
        // the engine's controller would move it), sometimes below the decode count.
        let mut s = chunked(16, 2048, 1024);
        for id in 0..8 {
            s.enqueue(seq(id, 0, vec![id as u32 + 1; 5]));
        }
        step(&mut s);
        s.enqueue(seq(100, 0, vec![9; 2048]));
        let budgets = [72, 40, 8, 3, 200, 136, 1000, 30];
        let mut prefilled = 0;
        let mut steps = 0;
        while prefilled < 2048 {
            let budget = budgets[steps % budgets.len()];
            let plan = step_within(&mut s, budget);
            steps += 1;
            assert_eq!(decoding_ids(&s, &plan), (0..8).collect::<Vec<u64>>(), "step {steps}");
            let long = plan.iter().find(|c| s.running[c.index].id == 100).expect("a chunk of the long prompt");
            assert_eq!(long.start, prefilled, "chunks follow each other");
            // What the decodes leave, but at least one token.
            let expected = budget.saturating_sub(8).max(1).min(2048 - prefilled);
            assert_eq!(long.len, expected, "step {steps} with a budget of {budget}");
            prefilled += long.len;
        }
        assert_eq!(steps, 15, "2048 tokens in chunks of 64, 32, 1, 1, 192, 128, 992, 22, then 64 ... 198");
        let plan = step(&mut s);
        assert_eq!(decoding_ids(&s, &plan), (0..8).chain([100]).collect::<Vec<u64>>());
    }

    #[test]
    fn a_burst_of_prompts_gets_first_tokens_group_by_group_beside_the_decodes() {
        let mut s = chunked(8, 100, 64);
        for id in 0..6 {
            s.enqueue(seq(id, 0, vec![id as u32; 4]));
        }
        // 10 tokens: whole prompts only (a third 4-token prompt would not fit in the 2 left).
        assert_eq!(step_shares(&mut s, 10), vec![(0, 4), (1, 4)]);
        // The first two decode; the 8 tokens they leave take the next two prompts.
        assert_eq!(step_shares(&mut s, 10), vec![(0, 1), (1, 1), (2, 4), (3, 4)]);
        // Four decodes leave 6 tokens: one prompt, the other would only partly fit.
        assert_eq!(step_shares(&mut s, 10), vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 4)]);
        // Five decodes leave 5: the last prompt.
        let plan = step_within(&mut s, 10);
        assert_eq!(shares(&s, &plan), vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 4)]);
        assert!(plan.iter().all(|c| c.want_logits), "every prompt was whole: all sample");
    }

    #[test]
    fn a_lone_long_prompt_takes_the_budget_up_to_the_prefill_limit() {
        let mut s = chunked(8, 16, 64);
        s.enqueue(seq(0, 0, vec![1; 40]));
        assert_eq!(step_shares(&mut s, 10), vec![(0, 10)]);
        assert_eq!(step_shares(&mut s, 100), vec![(0, 16)], "max_prefill_tokens caps it");
        assert_eq!(step_shares(&mut s, 8), vec![(0, 8)]);
        assert_eq!(step_shares(&mut s, 100), vec![(0, 6)]);
        assert_eq!(step_shares(&mut s, 1), vec![(0, 1)], "then it decodes");
    }

    #[test]
    fn an_arrival_during_a_long_prefill_waits_only_for_the_step_in_flight() {
        // A 100-token prompt alone, 40 tokens a step; a 6-token prompt arrives after its first
        // chunk, a 50-token one after its second.
        let mut s = chunked(8, 1000, 64);
        s.enqueue(seq(0, 0, vec![1; 100]));
        assert_eq!(step_shares(&mut s, 40), vec![(0, 40)]);
        s.enqueue(seq(1, 0, vec![2; 6]));
        // Admitted ahead of the started prompt's next chunk, whole: it samples at once.
        let plan = step_within(&mut s, 40);
        assert_eq!(shares(&s, &plan), vec![(1, 6), (0, 34)]);
        assert!(plan[0].want_logits);
        s.enqueue(seq(2, 0, vec![3; 50]));
        // One decode; the arrival takes what is left (it does not fit whole), the started
        // prompt waits this one step and goes first from then on.
        assert_eq!(step_shares(&mut s, 40), vec![(1, 1), (2, 39)]);
        assert_eq!(step_shares(&mut s, 40), vec![(1, 1), (0, 26), (2, 11)]);
    }

    #[test]
    fn a_sequence_ended_for_lack_of_space_gives_its_blocks_back() {
        // Two blocks of 4 slots: an 8-token prompt fills both, and its first decode needs a
        // third that the whole cache does not have.
        let mut s = scheduler(4, 100, 2);
        s.enqueue(seq(1, 0, (0..8).collect()));
        step(&mut s);
        let (plan, report) = s.schedule();
        assert!(plan.is_empty());
        assert_eq!(report.out_of_space.len(), 1);
        assert_eq!(s.allocator.available(), 0, "the sequence still holds its blocks until it ends");
        drop(report);
        assert_eq!(s.allocator.available(), 2);
        assert!(s.is_idle());
    }

    #[test]
    fn a_long_prompt_holds_only_its_window_of_sliding_blocks() {
        // Window 8, chunks of 4, blocks of 4: at most ceil((8 + 4) / 4) + 1 = 4 sliding
        // blocks, however long the sequence grows; the global table keeps every block.
        let mut s = sliding_scheduler(4, 64, 64, 8);
        s.enqueue(seq(1, 0, (0..41).collect()));
        for _ in 0..30 {
            let (plan, _) = s.schedule();
            let chunk = plan[0];
            let seq = &s.running[0];
            assert!(seq.sliding_blocks.held() <= 4, "{} sliding blocks at {}", seq.sliding_blocks.held(), chunk.start);
            assert_eq!(seq.blocks.len(), (chunk.start + chunk.len).div_ceil(4));
            // Every block the chunk's positions attend to is held: the first position attends
            // from `start + 1 - window`.
            let first = (chunk.start + 1).saturating_sub(8) / 4;
            assert_eq!(seq.sliding_blocks.released(), first, "given back exactly before the window");
            assert!(seq.sliding_blocks[first..].iter().all(|&b| b != crate::engine::block_allocator::RELEASED_BLOCK));
            s.mark_computed(&plan);
            if chunk.want_logits {
                s.running[0].tokens.push(7);
            }
        }
        assert_eq!(s.running[0].computed, 41 + 30 - 11, "11 prefill steps, then a decode each");
        // The blocks given back were reused: the rest of the 64-block pool was never touched.
        let ever_used = s.sliding.as_ref().unwrap().allocator.blocks_ever_used();
        assert!(ever_used <= 4, "{ever_used} sliding blocks touched for one sequence");
        s.remove_where(|_| true);
        assert_eq!((s.allocator.available(), sliding_available(&s)), (64, 64), "both pools are whole again");
    }

    #[test]
    fn admission_needs_room_in_the_sliding_pool_too() {
        // Plenty of global blocks, 3 sliding ones: an 8-token prompt computed in one chunk
        // takes 2 sliding blocks, so a second one waits although the global pool has room.
        let mut s = sliding_scheduler(100, 64, 3, 4);
        s.enqueue(seq(1, 0, (0..8).collect()));
        s.enqueue(seq(2, 0, (100..108).collect()));
        let plan = step(&mut s);
        assert_eq!(plan.len(), 1);
        assert_eq!((s.running.len(), s.waiting_len()), (1, 1));
        assert!(s.allocator.available() >= 2, "the global pool is not what holds it back");
        s.remove_where(|q| q.id == 1);
        let plan = step(&mut s);
        assert_eq!((plan.len(), s.running[0].id), (1, 2));
        s.remove_where(|_| true);
        assert_eq!((s.allocator.available(), sliding_available(&s)), (64, 3));
    }

    #[test]
    fn a_sequence_short_of_sliding_blocks_preempts_the_newest_which_resumes_later() {
        // 4 sliding blocks: two 8-token prompts take 2 each; the older one's first decode needs
        // a third (window 8), so the newer one is preempted though the global pool has room.
        let mut s = sliding_scheduler(100, 64, 4, 8);
        s.enqueue(seq(1, 0, (0..8).collect()));
        s.enqueue(seq(2, 0, (100..108).collect()));
        step(&mut s);
        let (plan, report) = s.schedule();
        assert_eq!(report.preempted, 1);
        assert!(report.out_of_space.is_empty());
        assert_eq!((s.running.len(), s.running[0].id, plan.len()), (1, 1, 1));
        assert!(s.allocator.available() > 32, "the global pool is not what ran out");
        s.mark_computed(&plan);
        // Once the first ends, the second resumes with its sampled token. Its global blocks are
        // cached, but the first's decode took the least recently used of its cached sliding
        // blocks (its first), which the window at position 8 needs: it recomputes everything.
        s.remove_where(|q| q.id == 1);
        let (plan, _) = s.schedule();
        assert_eq!((s.running[0].id, s.running[0].tokens.len()), (2, 9));
        assert_eq!((plan[0].start, plan[0].len), (0, 9));
        s.remove_where(|_| true);
        assert_eq!((s.allocator.available(), sliding_available(&s)), (64, 4));
    }

    #[test]
    fn a_prefix_hit_reuses_the_cached_window_of_sliding_blocks() {
        let mut s = sliding_scheduler(100, 64, 16, 8);
        let prompt: Vec<u32> = (0..20).collect();
        s.enqueue(seq(1, 0, prompt.clone()));
        step(&mut s);
        s.enqueue(seq(2, 0, prompt));
        let (_, report) = s.schedule();
        // Four full blocks (16 tokens) reused; the sliding layers need positions 9..16 of
        // them: blocks 2 and 3, shared with the first sequence (which still holds block 3).
        assert_eq!(report.prefix_hit_tokens, 16);
        let (first, second) = (&s.running[0], &s.running[1]);
        assert_eq!((second.computed, second.sliding_blocks.released()), (16, 2));
        assert_eq!(second.sliding_blocks[3], first.sliding_blocks[3]);
        s.remove_where(|_| true);
        assert_eq!((s.allocator.available(), sliding_available(&s)), (64, 16));
    }

    #[test]
    fn a_prefix_hit_whose_sliding_blocks_were_evicted_is_recomputed() {
        // 4 sliding blocks: another prompt run after the first evicts all of its cached ones.
        let mut s = sliding_scheduler(4, 64, 4, 8);
        let prompt: Vec<u32> = (0..20).collect();
        s.enqueue(seq(1, 0, prompt.clone()));
        while s.running.first().is_none_or(|q| q.computed < 20) {
            step(&mut s);
        }
        s.remove_where(|_| true);
        s.enqueue(seq(3, 0, (100..116).collect()));
        while s.running.first().is_none_or(|q| q.computed < 16) {
            step(&mut s);
        }
        s.remove_where(|_| true);
        s.enqueue(seq(2, 0, prompt));
        let (plan, report) = s.schedule();
        // The global blocks are cached, but without the window's sliding K/V they cannot be
        // used: the prompt is computed from the start.
        assert_eq!(report.prefix_hit_tokens, 0);
        assert_eq!((plan[0].start, s.running[0].blocks.len()), (0, 1));
        s.remove_where(|_| true);
        assert_eq!((s.allocator.available(), sliding_available(&s)), (64, 4));
    }

    #[test]
    fn removal_frees_blocks() {
        let mut s = scheduler(4, 100, 8);
        s.enqueue(seq(1, 0, (0..9).collect()));
        s.enqueue(seq(2, 0, (0..3).collect()));
        step(&mut s);
        s.remove_where(|_| true);
        assert_eq!(s.allocator.available(), 8);
        assert!(s.is_idle());
    }

    /// An adaptive budget that has measured 4 decodes at 20 ms and a prompt token at 1 ms: it
    /// grants 20 prompt tokens beside protected decodes (a step may cost twice the decodes'
    /// 20 ms), at most 256 tokens a step.
    fn measured_budget() -> StepBudget {
        use super::super::step_budget::StepTime;
        use std::time::Duration;
        let mut budget = StepBudget::adaptive(256, Duration::from_millis(25));
        for _ in 0..3 {
            budget.observe(StepDecodes::protected(4), 0, StepTime::idle(Duration::from_millis(20)));
        }
        budget.observe(StepDecodes::protected(4), 10, StepTime::idle(Duration::from_millis(30)));
        assert_eq!(budget.prompt_tokens(StepDecodes::protected(4)), 20);
        budget
    }

    /// A step planned under `budget`, run as [`step_counting`] runs it (also noting when a
    /// sequence got its first token): its plan and report.
    fn step_under(s: &mut Scheduler, budget: &StepBudget) -> (Vec<ScheduledChunk>, PlanReport) {
        let mut plan = Vec::new();
        let report = s.schedule_into(&mut plan, budget);
        assert!(report.out_of_space.is_empty());
        s.mark_computed(&plan);
        for c in &plan {
            if c.want_logits {
                let seq = &mut s.running[c.index];
                seq.tokens.push(7);
                seq.first_token.get_or_insert_with(Instant::now);
            }
        }
        (plan, report)
    }

    /// Prompts admitted by `plan` (chunks that start at a sequence's first token).
    fn admitted(plan: &[ScheduledChunk]) -> usize {
        plan.iter().filter(|c| c.start == 0).count()
    }

    #[test]
    fn a_burst_of_32_short_prompts_is_prefilled_in_as_few_steps_as_max_batch_tokens_allows() {
        // 32 clients submit together; the first prompt (18 tokens) reaches the engine alone and
        // the other 31 while its step runs. Beside its decode the budget would grant 20 tokens,
        // one prompt a step (32 steps of ramp-up); but it is one of the burst (its first token
        // came after they were submitted), so the burst gets everything but the decodes of the
        // 256-token steps: 14, 13, then the last 4 prompts.
        let budget = measured_budget();
        let mut s = chunked(32, 2048, 256);
        let mut burst: Vec<Sequence> = (0..32).map(|id| seq(id, 0, vec![id as u32 + 1; 18])).collect();
        let late = burst.split_off(1);
        s.enqueue(burst.remove(0));
        let (plan, _) = step_under(&mut s, &budget);
        assert_eq!(admitted(&plan), 1);
        for q in late {
            s.enqueue(q);
        }
        let mut admitted_per_step = Vec::new();
        while s.waiting_len() > 0 {
            let (plan, _) = step_under(&mut s, &budget);
            admitted_per_step.push(admitted(&plan));
            assert!(admitted_per_step.len() < 32, "{admitted_per_step:?}");
        }
        assert_eq!(admitted_per_step, vec![14, 13, 4]);
        // All 32 decode together from now on: they will also end together.
        let (plan, _) = step_under(&mut s, &budget);
        assert_eq!(decoding_ids(&s, &plan), (0..32).collect::<Vec<u64>>());
    }

    #[test]
    fn streams_that_were_streaming_before_a_burst_keep_the_latency_rule() {
        // 4 streams have their first tokens when 8 prompts are submitted: the budget's grant
        // beside their decodes (20 tokens) holds, one 18-token prompt a step, and the decodes
        // of the prompts admitted meanwhile (not protected) do not lift it.
        let budget = measured_budget();
        let mut s = chunked(32, 2048, 256);
        for id in 0..4 {
            s.enqueue(seq(id, 0, vec![id as u32 + 1; 5]));
        }
        step_under(&mut s, &budget);
        // Their first tokens came a millisecond before the burst is submitted.
        for q in &mut s.running {
            q.first_token = q.first_token.and_then(|t| t.checked_sub(std::time::Duration::from_millis(1)));
        }
        for id in 10..18 {
            s.enqueue(seq(id, 0, vec![id as u32; 18]));
        }
        for step in 0..8 {
            let (plan, report) = step_under(&mut s, &budget);
            assert_eq!(report.decodes, StepDecodes { total: 4 + step, protected: 4 }, "step {step}");
            assert_eq!(admitted(&plan), 1, "step {step}");
            let prompt_tokens: usize = plan.iter().filter(|c| c.start == 0).map(|c| c.len).sum();
            assert!(prompt_tokens <= 20, "step {step}: {prompt_tokens} prompt tokens");
        }
        assert_eq!(s.waiting_len(), 0);
        let (_, report) = step_under(&mut s, &budget);
        assert_eq!(report.decodes, StepDecodes::protected(12), "no prompt waits: every stream is protected");
    }

    #[test]
    fn a_full_running_set_keeps_the_latency_rule_for_the_queue() {
        // 2 running slots, both streaming; prompts submitted before their first tokens wait for
        // a slot: they cannot be served, so they do not lift the rule.
        let budget = measured_budget();
        let mut s = chunked(2, 2048, 256);
        let queued: Vec<Sequence> = (10..14).map(|id| seq(id, 0, vec![id as u32; 18])).collect();
        for id in 0..2 {
            s.enqueue(seq(id, 0, vec![id as u32 + 1; 5]));
        }
        step_under(&mut s, &budget);
        for q in queued {
            s.enqueue(q);
        }
        let (_, report) = step_under(&mut s, &budget);
        assert_eq!(report.decodes, StepDecodes::protected(2));
    }
}
