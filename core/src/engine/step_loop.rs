//! The engine thread: one batched forward per step over the scheduler's plan, the grammar
//! masks beside it, then sampling and streaming each sequence's next token.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::scheduler::{ScheduledChunk, Scheduler};
use super::sequence::{panic_message, Delivery, FinalEvent, Sequence};
use super::step_budget::{StepBudget, StepClock, StepDecodes};
use super::{Command, Shared};
use crate::constraint::masks::{MaskWorker, StepStates};
use crate::detokenize::Step;
use crate::error::{Error, Result};
use crate::kv_cache::KvStorage;
use crate::metrics::{add, Metrics};
use crate::models::{GenerationModel, LogitRows, SeqChunk};
use crate::request::{Event, FinishReason, StopReason};
use crate::sampling::Sampled;
use crate::tokenizer::Tokenizer;

/// The engine thread: owns the model, the KV storage and the scheduler.
pub(super) struct StepLoop {
    shared: Arc<Shared>,
    model: GenerationModel,
    kv: KvStorage,
    scheduler: Scheduler,
    /// Prompt tokens per step beside the decodes, adapted to the measured step times.
    budget: StepBudget,
    commands: Receiver<Command>,
    /// The head's work per logit row and its results (logits, or a greedy row's token),
    /// reused across steps.
    head: LogitRows,
    /// The step's plan, reused across steps.
    plan: Vec<ScheduledChunk>,
    /// The step's model input, kept empty between steps only for its allocation (see
    /// [`reuse_allocation`]).
    chunks: Vec<SeqChunk<'static>>,
    /// Sequences that finished in the step: id, reason, error.
    finished: Vec<(u64, StopReason, Option<String>)>,
    /// Computes the token masks of constrained sequences beside the forward.
    masks: MaskWorker,
}

/// An empty vector of another lifetime that keeps `buffer`'s allocation. `SeqChunk<'a>` has
/// the same layout for every `'a`, so the in-place collect specialisation of `Vec` reuses the
/// memory (no element ever exists, so nothing is converted).
fn reuse_allocation<'a, 'b>(mut buffer: Vec<SeqChunk<'a>>) -> Vec<SeqChunk<'b>> {
    buffer.clear();
    buffer.into_iter().map(|_| unreachable!("the buffer is empty")).collect()
}

impl StepLoop {
    /// The loop of an engine thread over `model`, `kv` and `scheduler`, fed by `commands`.
    pub(super) fn new(
        shared: Arc<Shared>,
        model: GenerationModel,
        kv: KvStorage,
        scheduler: Scheduler,
        budget: StepBudget,
        commands: Receiver<Command>,
    ) -> Self {
        Self {
            masks: MaskWorker::new(Arc::clone(&shared.mask_counters)),
            shared,
            model,
            kv,
            scheduler,
            budget,
            commands,
            head: LogitRows::default(),
            plan: Vec::new(),
            chunks: Vec::new(),
            finished: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            // Sleep when idle; otherwise take whatever arrived and keep stepping.
            if self.scheduler.is_idle() {
                match self.commands.recv() {
                    Ok(command) => {
                        if !self.handle(command) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut keep_running = true;
            while let Ok(command) = self.commands.try_recv() {
                keep_running &= self.handle(command);
            }
            if !keep_running {
                break;
            }
            self.reap_cancelled();
            // A panic inside a step must not take the engine down: fail the affected requests
            // and keep serving the others.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail_step(&e.to_string()),
                Err(panic) => self.fail_step(&format!("internal error: {}", panic_message(&panic))),
            }
            self.publish_gauges();
        }
        self.cancel_everything();
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(seq) => {
                self.scheduler.enqueue(*seq);
                true
            }
            Command::Shutdown => false,
        }
    }

    fn step(&mut self) -> Result<()> {
        let mut plan = std::mem::take(&mut self.plan);
        let result = self.run_plan(&mut plan);
        self.plan = plan;
        result
    }

    fn run_plan(&mut self, plan: &mut Vec<ScheduledChunk>) -> Result<()> {
        let clock = StepClock::start();
        let report = self.scheduler.schedule_into(plan, &self.budget);
        let metrics = Arc::clone(&self.shared.metrics);
        add(&metrics.preemptions, report.preempted as u64);
        metrics.step_token_budget.store(report.token_budget, std::sync::atomic::Ordering::Relaxed);
        add(&metrics.prefix_cache_hit_tokens, report.prefix_hit_tokens as u64);
        if report.preempted > 0 || !report.out_of_space.is_empty() {
            tracing::warn!(
                target: "cortexstream::kv",
                preempted = report.preempted,
                out_of_space = report.out_of_space.len(),
                free_blocks = self.scheduler.allocator.available(),
                running = self.scheduler.running.len(),
                waiting = self.scheduler.waiting_len(),
                "KV cache pressure"
            );
        }
        self.retire(report.out_of_space.into_iter().map(|seq| (seq, StopReason::Length, None)));
        if plan.is_empty() {
            return Ok(());
        }

        // Which logit rows need only their argmax (decided before the grammar states leave).
        self.head.argmax_only.clear();
        let running = &self.scheduler.running;
        self.head
            .argmax_only
            .extend(plan.iter().filter(|c| c.want_logits).map(|c| needs_only_argmax(&running[c.index])));
        // The grammar states of the sequences sampling this step leave their sequences for the
        // forward, so their masks can be computed beside it (see `MaskWorker`).
        let mut constrained = take_sampling_constraints(&mut self.scheduler.running, plan);
        let running = &self.scheduler.running;
        let mut chunks = reuse_allocation(std::mem::take(&mut self.chunks));
        chunks.extend(plan.iter().map(|c| {
            let seq = &running[c.index];
            SeqChunk {
                tokens: &seq.tokens[c.start..c.start + c.len],
                start_pos: c.start,
                block_table: &seq.blocks,
                sliding_block_table: &seq.sliding_blocks,
                want_logits: c.want_logits,
            }
        }));
        let batch_tokens: usize = plan.iter().map(|c| c.len).sum();
        // For the step budget's cost model, everything but one-token decode chunks costs as
        // prompt tokens (recomputation after preemption included).
        let is_decode = |c: &ScheduledChunk| c.len == 1 && c.start >= running[c.index].prompt_len;
        let prompt_like_tokens: usize = plan.iter().filter(|c| !is_decode(c)).map(|c| c.len).sum();
        let (model, kv, head) = (&self.model, &mut self.kv, &mut self.head);
        let outcome = self.masks.beside(&mut constrained, || model.forward_rows(&chunks, kv, head));
        self.chunks = reuse_allocation(chunks);
        for (index, state) in constrained {
            self.scheduler.running[index].constraint = Some(state);
        }
        outcome?;

        add(&metrics.steps, 1);
        metrics.observe_batch_size(batch_tokens);
        let computed = self.scheduler.mark_computed(plan);
        add(&metrics.prefill_tokens_total, computed.prompt as u64);
        add(&metrics.recomputed_tokens_total, computed.recomputed as u64);

        self.finished.clear();
        // Pick every row's token first (on the pool when several sample), then stream them in
        // plan order on this thread.
        let picked = self.pick_tokens(plan)?;
        for (c, picked) in plan.iter().filter(|c| c.want_logits).zip(picked) {
            let seq = &mut self.scheduler.running[c.index];
            if let Some((reason, error)) = emit(seq, picked, &self.shared.tokenizer, &metrics) {
                self.finished.push((seq.id, reason, error));
            }
        }
        if !self.finished.is_empty() {
            let finished = std::mem::take(&mut self.finished);
            let removed = self.scheduler.remove_where(|s| finished.iter().any(|f| f.0 == s.id));
            self.retire(removed.into_iter().filter_map(|seq| {
                let (_, reason, error) = finished.iter().find(|f| f.0 == seq.id).cloned()?;
                Some((seq, reason, error))
            }));
            self.finished = finished;
        }
        // The whole step, sampling and streaming included: what a running stream waits.
        let elapsed = clock.elapsed();
        let total = batch_tokens - prompt_like_tokens;
        let decodes = StepDecodes { total, protected: report.decodes.protected.min(total) };
        // What the budget saw, for measuring it (trace level: nothing is built unless asked).
        tracing::trace!(
            target: "cortexstream::step",
            decodes = decodes.total,
            protected_decodes = decodes.protected,
            prompt_tokens = prompt_like_tokens,
            token_budget = report.token_budget,
            cpu_us = elapsed.cpu.as_micros() as u64,
            wall_us = elapsed.wall.as_micros() as u64,
            "step"
        );
        self.budget.observe(decodes, prompt_like_tokens, elapsed);
        Ok(())
    }

    /// Picks the next token of every sequence with a logit row (in plan order): from the head's
    /// argmax, or sampled from its logits. Each sequence's sampler is its own (seed, RNG,
    /// counts), so rows are independent: with [`POOL_SAMPLING_ROWS`] rows or more to sample,
    /// they are sampled on the model's pool, whose other threads would otherwise wait for this
    /// one; the picks are the same on any thread.
    fn pick_tokens(&mut self, plan: &[ScheduledChunk]) -> Result<Vec<Picked>> {
        let vocab = self.model.vocab_size();
        let pool = self.model.pool();
        let head = &mut self.head;
        let mut sequences: Vec<Option<&mut Sequence>> = self.scheduler.running.iter_mut().map(Some).collect();
        // Logit rows come in plan order, one per chunk that wanted logits; the head packed the
        // logits of the rows that wanted them and the argmax of the others, each in row order.
        let (mut logit_rows, mut argmaxes) = (head.logits.chunks_exact_mut(vocab), head.argmax.iter());
        let mut jobs = Vec::new();
        let mut sampled = 0;
        for (row, c) in plan.iter().filter(|c| c.want_logits).enumerate() {
            let next = if head.argmax_only[row] {
                argmaxes.next().map(|&token| NextToken::RawArgmax(token))
            } else {
                logit_rows.next().map(NextToken::FromLogits)
            };
            let Some(next) = next else {
                return Err(Error::Internal(format!("the head returned no result for logit row {row}")));
            };
            let Some(seq) = sequences.get_mut(c.index).and_then(Option::take) else {
                return Err(Error::Internal(format!("running sequence {} has two logit rows in a step", c.index)));
            };
            sampled += usize::from(matches!(next, NextToken::FromLogits(_)));
            jobs.push(Mutex::new((seq, next, None)));
        }
        let run = |job: &Mutex<PickJob<'_>>| {
            let mut job = job.lock().unwrap_or_else(|e| e.into_inner());
            let (seq, next, picked) = &mut *job;
            *picked = Some(pick(seq, next));
        };
        if sampled >= POOL_SAMPLING_ROWS && pool.n_threads() > 1 {
            pool.run(jobs.len(), &|i| run(&jobs[i]));
        } else {
            jobs.iter().for_each(run);
        }
        Ok(jobs
            .into_iter()
            .map(|job| {
                job.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .2
                    .unwrap_or_else(|| Err("internal error: a logit row was not picked".into()))
            })
            .collect())
    }

    /// Ends cancelled requests (flag set by the caller, or the consumer went away).
    fn reap_cancelled(&mut self) {
        let removed = self.scheduler.remove_where(Sequence::is_cancelled);
        self.retire(removed.into_iter().map(|seq| (seq, StopReason::Cancelled, None)));
    }

    /// Counts a failed step and fails the requests it was computing.
    fn fail_step(&mut self, message: &str) {
        add(&self.shared.metrics.step_failures, 1);
        tracing::error!(target: "cortexstream::engine", error = message, running = self.scheduler.running.len(), "step failed");
        self.fail_running(message);
    }

    /// Fails every running request after an error inside a step.
    fn fail_running(&mut self, message: &str) {
        let ids: HashSet<u64> = self.scheduler.running.iter().map(|s| s.id).collect();
        let removed = self.scheduler.remove_where(|s| ids.contains(&s.id));
        self.retire(removed.into_iter().map(|seq| (seq, StopReason::Error, Some(message.to_string()))));
    }

    fn cancel_everything(&mut self) {
        let removed = self.scheduler.remove_where(|_| true);
        self.retire(removed.into_iter().map(|seq| (seq, StopReason::Cancelled, None)));
        // Requests that raced with shutdown.
        let raced: Vec<Sequence> = std::iter::from_fn(|| match self.commands.try_recv() {
            Ok(Command::Submit(seq)) => Some(*seq),
            _ => None,
        })
        .collect();
        self.retire(raced.into_iter().map(|seq| (seq, StopReason::Cancelled, None)));
        self.publish_gauges();
    }

    /// Ends sequences: gives back their blocks and queue places, counts the outcomes and
    /// publishes the gauges, and only then delivers their `Finished` events, so a caller that
    /// sees `Finished` also sees the blocks free in the metrics.
    fn retire(&mut self, ended: impl IntoIterator<Item = (Sequence, StopReason, Option<String>)>) {
        let metrics = &self.shared.metrics;
        let mut finals: Vec<FinalEvent> = Vec::new();
        for (seq, reason, error) in ended {
            add(&metrics.requests_finished, 1);
            match reason {
                StopReason::Cancelled => add(&metrics.requests_cancelled, 1),
                StopReason::Error => add(&metrics.requests_failed, 1),
                _ => {}
            }
            log_finish(&seq, reason.finish_reason(), error.as_deref());
            finals.push(seq.finish(reason, error));
        }
        if finals.is_empty() {
            return;
        }
        self.publish_gauges();
        for event in finals {
            event.deliver();
        }
    }

    fn publish_gauges(&self) {
        let m = &self.shared.metrics;
        m.queue_depth.store(self.scheduler.waiting_len(), Ordering::Relaxed);
        m.running.store(self.scheduler.running.len(), Ordering::Relaxed);
        m.kv_blocks_free.store(self.scheduler.allocator.available(), Ordering::Relaxed);
        if let Some(sliding) = &self.scheduler.sliding {
            m.kv_sliding_blocks_free.store(sliding.allocator.available(), Ordering::Relaxed);
        }
    }
}

/// Takes the constraint state out of every sequence that samples a token this step, with its
/// index in `running` (put back after the forward).
fn take_sampling_constraints(running: &mut [Sequence], plan: &[ScheduledChunk]) -> StepStates {
    plan.iter()
        .filter(|c| c.want_logits)
        .filter_map(|c| running[c.index].constraint.take().map(|state| (c.index, state)))
        .collect()
}

/// Whether `seq`'s next token is the argmax of its raw logits (see
/// [`crate::sampling::Sampler::picks_raw_argmax`]), so the head need not write its logits.
fn needs_only_argmax(seq: &Sequence) -> bool {
    // The grammar state is checked too: it is what masks the logits, whatever the settings say.
    seq.sampler.picks_raw_argmax() && seq.constraint.is_none()
}

/// Rows to sample from logits from which a step samples them on the pool: one row alone is
/// not worth waking the pool for.
const POOL_SAMPLING_ROWS: usize = 2;

/// A sequence's token as picked (or why picking failed: its grammar rejected every token).
type Picked = std::result::Result<Sampled, String>;

/// A sequence, its logit row, and the token picked from it.
type PickJob<'a> = (&'a mut Sequence, NextToken<'a>, Option<Picked>);

/// What the head gave for a sequence's logit row.
enum NextToken<'a> {
    /// The row's logits, to sample from.
    FromLogits(&'a mut [f32]),
    /// The argmax of the raw logits, for a sequence that [`needs_only_argmax`].
    RawArgmax(u32),
}

/// Samples the next token of `seq` from its logits (masked by its grammar), or takes the
/// head's argmax. Touches only `seq`'s sampler and grammar mask: rows are picked in any order.
fn pick(seq: &mut Sequence, next: &mut NextToken<'_>) -> Picked {
    match next {
        NextToken::FromLogits(logits) => {
            if let Some(constraint) = &mut seq.constraint {
                constraint.mask_logits(logits)?;
            }
            Ok(seq.sampler.sample(logits, &seq.tokens))
        }
        NextToken::RawArgmax(token) => Ok(seq.sampler.sampled_raw_argmax(*token)),
    }
}

/// Appends the token [`pick`] picked for `seq`, streams it, and says whether the request is
/// now finished (and why).
fn emit(
    seq: &mut Sequence,
    picked: Picked,
    tokenizer: &Tokenizer,
    metrics: &Metrics,
) -> Option<(StopReason, Option<String>)> {
    let now = Instant::now();
    let sampled = match picked {
        Ok(sampled) => sampled,
        Err(message) => return Some((StopReason::Error, Some(message))),
    };
    let token = sampled.token;
    let grammar_complete = match seq.constraint.as_mut().map(|c| c.advance(token)) {
        Some(Err(message)) => return Some((StopReason::Error, Some(message))),
        Some(Ok(complete)) => complete,
        None => false,
    };
    seq.tokens.push(token);
    seq.sampler.observe(token);
    add(&metrics.generated_tokens_total, 1);
    match seq.last_token {
        None => {
            metrics.observe_ttft(now.duration_since(seq.submitted).as_secs_f64());
            log_first_token(seq, now);
        }
        Some(prev) => metrics.observe_per_token(now.duration_since(prev).as_secs_f64()),
    }
    seq.first_token.get_or_insert(now);
    seq.last_token = Some(now);

    let mut reason = None;
    let mut text = String::new();
    if let Some(stop) = seq.stop_ids.get(&token) {
        reason = Some(stop.clone());
    } else {
        // Special tokens (control markers) are not part of the visible text.
        let bytes = if tokenizer.is_special(token) { &[][..] } else { tokenizer.token_bytes(token).unwrap_or(&[]) };
        match seq.text.push(bytes) {
            Step::Text(t) => text = t,
            Step::Stopped { text: before, stop } => {
                text = before;
                reason = Some(StopReason::StopString(stop));
            }
        }
    }
    if reason.is_none() && grammar_complete {
        reason = Some(StopReason::GrammarComplete);
    }
    if reason.is_none() && seq.generated() >= seq.max_new_tokens {
        reason = Some(StopReason::Length);
    }
    if reason.is_some() {
        // Nothing can complete a stop string any more: release what was held back.
        text.push_str(&seq.text.finish());
    }
    let mut logprobs = sampled.logprobs;
    if let Some(logprobs) = &mut logprobs {
        logprobs.fill_bytes(token, tokenizer);
    }
    let event = Event::Token { id: token, text, logprobs };
    match seq.sink.deliver(event) {
        Delivery::Delivered => reason.map(|r| (r, None)),
        Delivery::ConsumerGone => Some((StopReason::Cancelled, None)),
        Delivery::CallbackPanicked(message) => {
            Some((StopReason::Error, Some(format!("the event callback panicked: {message}"))))
        }
    }
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// The first token of a request is sampled: its prefill is over.
fn log_first_token(seq: &Sequence, now: Instant) {
    tracing::debug!(
        target: "cortexstream::request",
            parent: &seq.span,
        ttft_ms = millis(seq.submitted, now),
        prefill_ms = seq.first_scheduled.map_or(0.0, |t| millis(t, now)),
        cached_prompt_tokens = seq.cached_prompt_tokens,
        "first token"
    );
}

/// A request ends: why, its token counts and timings (an error or a cancel says so).
fn log_finish(seq: &Sequence, reason: FinishReason, error: Option<&str>) {
    let message = match reason {
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "failed",
        _ => "finished",
    };
    macro_rules! finish_event {
        ($level:ident) => {
            tracing::$level!(
                target: "cortexstream::request",
            parent: &seq.span,
                reason = reason.as_str(),
                prompt_tokens = seq.prompt_len,
                completion_tokens = seq.generated(),
                cached_prompt_tokens = seq.cached_prompt_tokens,
                total_ms = millis(seq.submitted, Instant::now()),
                error,
                "{message}"
            )
        };
    }
    if reason == FinishReason::Error {
        finish_event!(warn);
    } else {
        finish_event!(info);
    }
}
