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

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::kv_cache::BlockAllocator;
use crate::sequence::Sequence;

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerConfig {
    pub max_running: usize,
    pub max_batch_tokens: usize,
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
    /// Prompt tokens newly served from the prefix cache at admission.
    pub prefix_hit_tokens: usize,
    /// Sequences that cannot grow even alone (the cache is full): they must finish.
    pub out_of_space: Vec<Sequence>,
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
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, allocator: BlockAllocator) -> Self {
        Self { config, waiting: BinaryHeap::new(), running: Vec::new(), allocator }
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

    /// Removes every sequence (waiting or running) that `should_remove` selects, releasing
    /// its blocks. Runs every step (cancellation), so the waiting heap is only rebuilt when
    /// one of its sequences is actually removed.
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
        for seq in &mut removed {
            self.allocator.release_all(&seq.blocks);
            seq.blocks.clear();
        }
        removed
    }

    /// Plans the next step. Returned chunks index into `self.running`, which this call may
    /// reorder, shrink (preemption) and grow (admission).
    pub fn schedule(&mut self) -> (Vec<ScheduledChunk>, PlanReport) {
        let mut report = PlanReport::default();
        let mut plan = Vec::with_capacity(self.running.len() + 4);
        let mut budget = self.config.max_batch_tokens;
        let block_size = self.allocator.block_size();

        self.running.sort_by_key(|s| (Reverse(s.priority), s.arrival));
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let len = seq.pending().min(budget);
            let needed = self.allocator.blocks_for(seq.computed + len).saturating_sub(seq.blocks.len());
            // Make room by preempting the newest sequences behind this one.
            while self.allocator.available() < needed && self.running.len() > i + 1 {
                if let Some(victim) = self.running.pop() {
                    self.preempt(victim);
                    report.preempted += 1;
                }
            }
            if self.allocator.available() < needed {
                let seq = self.running.remove(i);
                if self.running.is_empty() && plan.is_empty() {
                    // Alone and still no room: the whole cache cannot hold it.
                    report.out_of_space.push(seq);
                } else {
                    self.preempt(seq);
                    report.preempted += 1;
                }
                continue;
            }
            self.allocate_into(i, needed);
            let start = self.running[i].computed;
            plan.push(ScheduledChunk {
                index: i,
                start,
                len,
                want_logits: start + len == self.running[i].tokens.len(),
            });
            budget -= len;
            i += 1;
        }

        while self.running.len() < self.config.max_running && budget > 0 {
            let Some(Queued(mut seq)) = self.waiting.pop() else { break };
            if seq.blocks.is_empty() {
                // Reuse cached full blocks of the prompt, but always leave the last token to
                // compute: its logits are what the next token is sampled from.
                let max_blocks = (seq.tokens.len() - 1) / block_size;
                let (blocks, last_hash) = self.allocator.acquire_prefix(&seq.tokens, max_blocks);
                seq.computed = blocks.len() * block_size;
                seq.registered_blocks = blocks.len();
                seq.last_block_hash = last_hash;
                seq.blocks = blocks;
                if seq.first_scheduled.is_none() {
                    seq.cached_prompt_tokens = seq.computed.min(seq.prompt_len);
                    report.prefix_hit_tokens += seq.cached_prompt_tokens;
                }
            }
            let len = seq.pending().min(budget);
            let needed = self.allocator.blocks_for(seq.computed + len).saturating_sub(seq.blocks.len());
            if self.allocator.available() < needed {
                // Not now: give the prefix blocks back (they stay cached) and keep its place.
                self.preempt(seq);
                break;
            }
            if seq.first_scheduled.is_none() {
                seq.first_scheduled = Some(std::time::Instant::now());
            }
            self.running.push(seq);
            let index = self.running.len() - 1;
            self.allocate_into(index, needed);
            let seq = &self.running[index];
            plan.push(ScheduledChunk {
                index,
                start: seq.computed,
                len,
                want_logits: seq.computed + len == seq.tokens.len(),
            });
            budget -= len;
        }
        (plan, report)
    }

    /// Records that the planned chunks went through the model: advances `computed` and
    /// registers newly completed blocks in the prefix cache.
    pub fn mark_computed(&mut self, plan: &[ScheduledChunk]) {
        let block_size = self.allocator.block_size();
        for chunk in plan {
            let seq = &mut self.running[chunk.index];
            seq.computed = chunk.start + chunk.len;
            while (seq.registered_blocks + 1) * block_size <= seq.computed {
                let r = seq.registered_blocks;
                let tokens = &seq.tokens[r * block_size..(r + 1) * block_size];
                let hash = self.allocator.register_full_block(seq.blocks[r], seq.last_block_hash, tokens);
                seq.last_block_hash = Some(hash);
                seq.registered_blocks += 1;
            }
        }
    }

    fn allocate_into(&mut self, index: usize, count: usize) {
        for _ in 0..count {
            // `schedule` checked availability first, so this cannot fail.
            let Some(block) = self.allocator.allocate() else { unreachable!("KV availability was checked") };
            self.running[index].blocks.push(block);
        }
    }

    /// Sends a sequence back to the queue, releasing its blocks; it will recompute its
    /// tokens (mostly from the prefix cache) when readmitted.
    fn preempt(&mut self, mut seq: Sequence) {
        self.allocator.release_all(&seq.blocks);
        seq.blocks.clear();
        seq.computed = 0;
        seq.registered_blocks = 0;
        seq.last_block_hash = None;
        self.waiting.push(Queued(seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detokenize::StreamingText;
    use crate::request::SamplingParams;
    use crate::sampling::Sampler;
    use crate::sequence::EventSink;
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
            blocks: Vec::new(),
            registered_blocks: 0,
            last_block_hash: None,
            max_new_tokens: 100,
            sampler: Sampler::new(SamplingParams::greedy()),
            text: StreamingText::new(vec![]),
            stop_ids: Default::default(),
            sink: EventSink::Channel(tx),
            cancel: Arc::new(AtomicBool::new(false)),
            cached_prompt_tokens: 0,
            submitted: std::time::Instant::now(),
            first_scheduled: None,
            first_token: None,
            last_token: None,
        }
    }

    fn scheduler(max_running: usize, budget: usize, blocks: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig { max_running, max_batch_tokens: budget }, BlockAllocator::new(blocks, 4))
    }

    /// Runs a step as the engine would, sampling token 7 for every chunk that wants logits.
    fn step(s: &mut Scheduler) -> Vec<ScheduledChunk> {
        let (plan, report) = s.schedule();
        assert!(report.out_of_space.is_empty());
        s.mark_computed(&plan);
        for c in &plan {
            if c.want_logits {
                s.running[c.index].tokens.push(7);
            }
        }
        plan
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
        // Finish sequence 1: its blocks free up and 2 resumes, generated token intact.
        let done = s.remove_where(|q| q.id == 1);
        assert_eq!(done.len(), 1);
        let (plan, _) = s.schedule();
        assert_eq!(s.running[0].id, 2);
        assert_eq!(s.running[0].tokens.len(), 9);
        assert!(plan[0].want_logits);
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
}
