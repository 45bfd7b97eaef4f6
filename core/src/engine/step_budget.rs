//! How many prompt tokens the next step may carry beside its decodes, so that a step's time
//! stays near a target inter-token latency.
//!
//! Every running stream gets one token per step, so a step's duration *is* their inter-token
//! latency. A step costs what its decodes cost plus a cost per prompt token, and the second
//! grows with the prompt's depth (attention over everything before it). [`StepBudget`] keeps
//! two running estimates from the steps it is shown: the time of a step without prompt work,
//! and the time per prompt token beyond it; the prompt chunk is what fits in the rest of the
//! target. When the decodes alone take more than half the target (many streams, a slow or
//! busy machine), a step may take up to twice their time instead: a prompt always gets at
//! least half of every step, and the streams' inter-token latency at most doubles while it is
//! prefilled. It takes durations as input and never reads a clock, so it is tested with
//! made-up ones.
//!
//! Without a target the budget is fixed: `max_batch_tokens` tokens a step, decodes first
//! (every one of them: a prompt gets at least one token even when they exceed the budget).

use std::time::Duration;

/// Weight of the newest step in the running estimates: they mostly reflect the last ~4 steps,
/// so a deeper prompt chunk or a busier machine shows within a few steps.
const SMOOTHING: f64 = 0.25;

/// A step may take this many times its decodes' time when that is more than the target.
const PROMPT_SHARE_FACTOR: f64 = 2.0;

/// The least share of a step's time its prompt chunk is taken to cost (see [`StepBudget::observe`]).
const MIN_PROMPT_SHARE: f64 = 0.1;

/// The prompt chunk grows at most this much per step over the largest one measured: the
/// estimates are only trusted near the chunk sizes they come from.
const MAX_GROWTH: usize = 2;

/// Steps with prompt work in a row after which one step runs the decodes alone: their cost
/// grows as the running streams' contexts do, and without a fresh measurement of it a prompt
/// would get ever less of each step. Costs the prompt one step in this many.
const REFRESH_DECODES_EVERY: u32 = 16;

/// Prompt tokens of the first adaptive step, before anything was measured: small enough that
/// a long prompt arriving first makes no long step, big enough to measure the per-token cost.
const INITIAL_PROMPT_TOKENS: usize = 64;

/// An exponentially weighted running mean.
fn smooth(estimate: Option<f64>, sample: f64) -> Option<f64> {
    Some(estimate.map_or(sample, |old| old + SMOOTHING * (sample - old)))
}

/// The prompt token budget of the next step: fixed, or adapted to a target step time.
#[derive(Debug, Clone)]
pub(crate) struct StepBudget {
    /// Tokens of a step, decodes and prompt together: the budget without a target, the
    /// ceiling with one.
    max_tokens: usize,
    /// Target step time in seconds.
    target: Option<f64>,
    /// Seconds of a step with decodes and no prompt work.
    decode_step: Option<f64>,
    /// Seconds per prompt token beyond the decodes.
    per_prompt_token: Option<f64>,
    /// The largest prompt chunk measured (the growth limit starts from it).
    largest_measured: usize,
    /// Steps with both decodes and prompt work since the last decode-only one.
    since_decode_only: u32,
}

impl StepBudget {
    /// `max_tokens` a step, decodes first; at least one prompt token, so that a prompt always
    /// progresses.
    pub fn fixed(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            target: None,
            decode_step: None,
            per_prompt_token: None,
            largest_measured: 0,
            since_decode_only: 0,
        }
    }

    /// Prompt chunks sized so that a step takes about `target`, at most `max_tokens` tokens a
    /// step.
    pub fn adaptive(max_tokens: usize, target: Duration) -> Self {
        Self { target: Some(target.as_secs_f64()), ..Self::fixed(max_tokens) }
    }

    /// Prompt tokens a step that carries `decodes` decodes may add: 0 for one step in
    /// [`REFRESH_DECODES_EVERY`] + 1 of a long prefill beside decodes (see there), else at least 1.
    pub fn prompt_tokens(&self, decodes: usize) -> usize {
        let room = self.max_tokens.saturating_sub(decodes);
        let Some(target) = self.target else {
            return room.max(1);
        };
        if decodes > 0 && self.since_decode_only >= REFRESH_DECODES_EVERY {
            return 0;
        }
        let ceiling = (self.largest_measured * MAX_GROWTH).max(INITIAL_PROMPT_TOKENS).min(room).max(1);
        let Some(per_token) = self.per_prompt_token else { return ceiling };
        let decodes_time = if decodes > 0 { self.decode_step.unwrap_or(0.0) } else { 0.0 };
        let step_time = target.max(PROMPT_SHARE_FACTOR * decodes_time);
        let affordable = (step_time - decodes_time) / per_token;
        // Saturating float-to-int conversion: an infinite or huge estimate is just the ceiling.
        (affordable.floor() as usize).clamp(1, ceiling)
    }

    /// Records that a step of `decodes` decodes and `prompt_tokens` prompt tokens took
    /// `elapsed`.
    pub fn observe(&mut self, decodes: usize, prompt_tokens: usize, elapsed: Duration) {
        if self.target.is_none() || decodes + prompt_tokens == 0 {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        if prompt_tokens == 0 {
            // After a stretch of prefill the decodes may cost far more than before (longer
            // contexts): the fresh measurement replaces the old estimate.
            let stale = self.since_decode_only >= REFRESH_DECODES_EVERY;
            self.decode_step = if stale { Some(seconds) } else { smooth(self.decode_step, seconds) };
            self.since_decode_only = 0;
            return;
        }
        if decodes > 0 {
            self.since_decode_only += 1;
        }
        let decodes_time = if decodes > 0 { self.decode_step.unwrap_or(0.0) } else { 0.0 };
        // A noisy step can take less than its decodes' estimate: a prompt chunk is taken to
        // cost at least a tenth of its step.
        let per_token = (seconds - decodes_time).max(MIN_PROMPT_SHARE * seconds) / prompt_tokens as f64;
        self.per_prompt_token = smooth(self.per_prompt_token, per_token);
        self.largest_measured = self.largest_measured.max(prompt_tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine: a step costs `fixed_ms`, plus `per_decode_ms` a decode and `per_prompt_ms` a
    /// prompt token.
    #[derive(Clone, Copy)]
    struct Machine {
        fixed_ms: f64,
        per_decode_ms: f64,
        per_prompt_ms: f64,
    }

    impl Machine {
        fn step(self, decodes: usize, prompt: usize) -> Duration {
            let ms = self.fixed_ms + self.per_decode_ms * decodes as f64 + self.per_prompt_ms * prompt as f64;
            Duration::from_secs_f64(ms / 1000.0)
        }

        fn ms(self, decodes: usize, prompt: usize) -> f64 {
            self.step(decodes, prompt).as_secs_f64() * 1000.0
        }
    }

    /// Runs `steps` steps of `decodes` decodes and as many prompt tokens as the budget grants;
    /// returns the last nonzero grant.
    fn run(budget: &mut StepBudget, machine: Machine, decodes: usize, steps: usize) -> usize {
        let mut last = 0;
        for _ in 0..steps {
            let prompt = budget.prompt_tokens(decodes);
            budget.observe(decodes, prompt, machine.step(decodes, prompt));
            last = if prompt > 0 { prompt } else { last };
        }
        match budget.prompt_tokens(decodes) {
            0 => last,
            grant => grant,
        }
    }

    /// Decode-only steps, as before a long prompt arrives.
    fn decode_only(budget: &mut StepBudget, machine: Machine, decodes: usize, steps: usize) {
        for _ in 0..steps {
            budget.observe(decodes, 0, machine.step(decodes, 0));
        }
    }

    const MACHINE: Machine = Machine { fixed_ms: 5.0, per_decode_ms: 1.0, per_prompt_ms: 0.5 };

    #[test]
    fn a_fixed_budget_gives_prompts_what_the_decodes_leave_and_ignores_step_times() {
        let mut budget = StepBudget::fixed(512);
        assert_eq!(budget.prompt_tokens(0), 512);
        assert_eq!(budget.prompt_tokens(8), 504);
        budget.observe(8, 504, Duration::from_secs(10));
        assert_eq!(budget.prompt_tokens(8), 504);
        assert_eq!(budget.prompt_tokens(600), 1, "a prompt still progresses");
    }

    #[test]
    fn the_prompt_chunk_settles_where_a_step_takes_the_target() {
        // 8 decodes take 13 ms; a 30 ms target leaves 17 ms, 34 prompt tokens.
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        decode_only(&mut budget, MACHINE, 8, 5);
        assert_eq!(budget.prompt_tokens(8), INITIAL_PROMPT_TOKENS, "nothing measured yet");
        let settled = run(&mut budget, MACHINE, 8, 30);
        assert!((33..=34).contains(&settled), "settled at {settled}");
        assert!(MACHINE.ms(8, settled) <= 30.0 + 1e-9);
    }

    #[test]
    fn a_lone_prompt_gets_the_whole_target_and_grows_at_most_twofold_per_step() {
        // No decodes: 5 ms + 0.5 ms a token, target 1 s: 1990 tokens, reached by doubling.
        let mut budget = StepBudget::adaptive(4096, Duration::from_millis(1000));
        let mut grants = Vec::new();
        for _ in 0..8 {
            let prompt = budget.prompt_tokens(0);
            grants.push(prompt);
            budget.observe(0, prompt, MACHINE.step(0, prompt));
        }
        assert_eq!(&grants[..5], &[64, 128, 256, 512, 1024]);
        assert!((1850..=1990).contains(&grants[7]), "{grants:?}");
    }

    #[test]
    fn decodes_over_half_the_target_leave_prompts_half_of_every_step() {
        // 32 decodes take 37 ms against a 50 ms target: a step may take 74 ms, 37 of them
        // for 74 prompt tokens (not the 26 that the target alone would leave).
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(50));
        decode_only(&mut budget, MACHINE, 32, 20);
        let settled = run(&mut budget, MACHINE, 32, 40);
        assert!((73..=74).contains(&settled), "settled at {settled}");
        assert!(MACHINE.ms(32, settled) <= 2.0 * MACHINE.ms(32, 0) + 0.01);
    }

    #[test]
    fn deeper_and_costlier_prompt_tokens_shrink_the_chunk_within_a_few_steps() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        decode_only(&mut budget, MACHINE, 8, 5);
        let before = run(&mut budget, MACHINE, 8, 30);
        // Prompt tokens now cost four times as much (attention over a longer prefix).
        let deeper = Machine { per_prompt_ms: 2.0, ..MACHINE };
        let prompt = budget.prompt_tokens(8);
        budget.observe(8, prompt, deeper.step(8, prompt));
        assert!(budget.prompt_tokens(8) < before, "shrinks after one slow step");
        let settled = run(&mut budget, deeper, 8, 30);
        assert!((8..=9).contains(&settled), "settled at {settled}, 17 ms / 2 ms expected");
    }

    #[test]
    fn decodes_that_grow_costlier_during_a_long_prefill_are_measured_again() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(50));
        decode_only(&mut budget, MACHINE, 8, 5);
        run(&mut budget, MACHINE, 8, 20);
        // The streams' contexts grew: 8 decodes now take 105 ms, more than half the target.
        let grown = Machine { per_decode_ms: 12.5, ..MACHINE };
        let mut grants = Vec::new();
        for _ in 0..60 {
            let prompt = budget.prompt_tokens(8);
            grants.push(prompt);
            budget.observe(8, prompt, grown.step(8, prompt));
        }
        // One decode-only step in every 17, and the prompt again gets half of each step
        // (105 ms, 210 tokens), not what a stale 13 ms estimate of the decodes would leave.
        let decode_only_steps = grants.iter().filter(|&&g| g == 0).count();
        assert!((3..=4).contains(&decode_only_steps), "{grants:?}");
        let last = *grants.iter().rev().find(|&&g| g > 0).unwrap();
        assert!((200..=210).contains(&last), "{grants:?}");
    }

    #[test]
    fn a_noisy_fast_step_cannot_make_prompt_tokens_free() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        decode_only(&mut budget, MACHINE, 8, 5);
        // 64 prompt tokens in less time than the decodes alone usually take.
        budget.observe(8, 64, Duration::from_millis(10));
        assert!(budget.prompt_tokens(8) <= 128, "{}", budget.prompt_tokens(8));
    }

    #[test]
    fn empty_steps_are_not_measured() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(20));
        budget.observe(0, 0, Duration::from_millis(500));
        assert_eq!(budget.prompt_tokens(0), INITIAL_PROMPT_TOKENS);
    }

    #[test]
    fn the_grant_stays_within_the_ceiling_and_above_zero() {
        let mut budget = StepBudget::adaptive(100, Duration::from_millis(1000));
        assert_eq!(run(&mut budget, MACHINE, 8, 10), 92, "max_batch_tokens caps decodes and prompt together");
        let slow = Machine { per_prompt_ms: 10_000.0, ..MACHINE };
        assert_eq!(run(&mut budget, slow, 8, 10), 1, "one token a step at worst");
    }
}
