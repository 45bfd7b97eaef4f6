//! How many tokens the next step may carry, so that a step's time stays near a target
//! inter-token latency.
//!
//! Every running stream gets one token per step, so a step's duration *is* their inter-token
//! latency. A step costs roughly a fixed part (reading the weights once, the running decodes'
//! attention, sampling) plus a part per token it carries. [`StepBudget`] fits that line to the
//! steps it is shown (least squares, older steps weighing less, so it follows a context that
//! grows and a machine whose load changes) and answers with the token count whose predicted
//! time is the target. It takes durations as input and never reads a clock, so it is tested
//! with made-up ones.
//!
//! Without a target the budget is fixed at its ceiling (`max_batch_tokens`).

use std::time::Duration;

/// How much each earlier step weighs relative to the next one: the fit mostly reflects the
/// last ~20 steps (1 / (1 - 0.95)).
const FORGETTING: f64 = 0.95;

/// The budget grows at most this much per step: the fitted line is only trusted near the
/// token counts it has seen (attention makes big chunks cost more than linear).
const MAX_GROWTH: f64 = 2.0;

/// Smallest spread of token counts (variance, tokens²) with which the fixed and per-token
/// costs can be told apart; below it every token is charged its share of the whole step.
const MIN_TOKEN_VARIANCE: f64 = 1.0;

/// Budget of the first adaptive step, before anything was measured: small enough that a long
/// prompt arriving first cannot make a long step, big enough to measure the per-token cost.
const INITIAL_TOKENS: usize = 64;

/// Exponentially weighted sums of (tokens, seconds) for a least-squares line.
#[derive(Debug, Clone, Copy, Default)]
struct WeightedFit {
    weight: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl WeightedFit {
    fn add(&mut self, x: f64, y: f64) {
        for sum in [&mut self.weight, &mut self.x, &mut self.y, &mut self.xx, &mut self.xy] {
            *sum *= FORGETTING;
        }
        self.weight += 1.0;
        self.x += x;
        self.y += y;
        self.xx += x * x;
        self.xy += x * y;
    }

    /// `(fixed seconds, seconds per token)`, both non-negative, or `None` before any step.
    fn line(&self) -> Option<(f64, f64)> {
        if self.weight <= 0.0 || self.x <= 0.0 {
            return None;
        }
        let mean_x = self.x / self.weight;
        let mean_y = self.y / self.weight;
        let variance = self.xx / self.weight - mean_x * mean_x;
        let proportional = (0.0, self.y / self.x);
        if variance < MIN_TOKEN_VARIANCE {
            return Some(proportional);
        }
        let slope = (self.xy / self.weight - mean_x * mean_y) / variance;
        let intercept = mean_y - slope * mean_x;
        // Noise can tilt the line the impossible way; charging per token is the safe answer.
        if slope <= 0.0 || intercept < 0.0 {
            return Some(proportional);
        }
        Some((intercept, slope))
    }
}

/// The token budget of the next step: fixed, or adapted to a target step time.
#[derive(Debug, Clone)]
pub(crate) struct StepBudget {
    /// The ceiling, and the fixed budget without a target.
    max_tokens: usize,
    target: Option<Duration>,
    fit: WeightedFit,
    current: usize,
}

impl StepBudget {
    /// Always `max_tokens`.
    pub fn fixed(max_tokens: usize) -> Self {
        let max_tokens = max_tokens.max(1);
        Self { max_tokens, target: None, fit: WeightedFit::default(), current: max_tokens }
    }

    /// Adapts to `target` per step, between 1 and `max_tokens`.
    pub fn adaptive(max_tokens: usize, target: Duration) -> Self {
        let max_tokens = max_tokens.max(1);
        Self { max_tokens, target: Some(target), fit: WeightedFit::default(), current: INITIAL_TOKENS.min(max_tokens) }
    }

    /// Tokens the next step may carry (its decodes and prompt chunks together).
    pub fn tokens(&self) -> usize {
        self.current
    }

    /// Records that a step of `tokens` tokens took `elapsed`, and sets the next budget.
    pub fn observe(&mut self, tokens: usize, elapsed: Duration) {
        let Some(target) = self.target else { return };
        if tokens == 0 {
            return;
        }
        self.fit.add(tokens as f64, elapsed.as_secs_f64());
        let Some((fixed, per_token)) = self.fit.line() else { return };
        let affordable = if per_token > 0.0 { (target.as_secs_f64() - fixed) / per_token } else { f64::INFINITY };
        let ceiling = (self.current as f64 * MAX_GROWTH).min(self.max_tokens as f64);
        self.current = affordable.round().clamp(1.0, ceiling.max(1.0)) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose step costs `fixed_ms` plus `per_token_ms` per token.
    fn step_time(fixed_ms: f64, per_token_ms: f64, tokens: usize) -> Duration {
        Duration::from_secs_f64((fixed_ms + per_token_ms * tokens as f64) / 1000.0)
    }

    /// Runs `steps` steps that each use the whole budget, plus `decodes` tokens when the
    /// budget is smaller (decodes always run), and returns the last budget.
    fn converge(budget: &mut StepBudget, steps: usize, fixed_ms: f64, per_token_ms: f64, decodes: usize) -> usize {
        for _ in 0..steps {
            let tokens = budget.tokens().max(decodes);
            budget.observe(tokens, step_time(fixed_ms, per_token_ms, tokens));
        }
        budget.tokens()
    }

    #[test]
    fn a_fixed_budget_ignores_step_times() {
        let mut budget = StepBudget::fixed(512);
        assert_eq!(budget.tokens(), 512);
        budget.observe(512, Duration::from_secs(10));
        assert_eq!(budget.tokens(), 512);
    }

    #[test]
    fn the_budget_settles_where_a_step_takes_the_target() {
        // 10 ms fixed + 0.1 ms per token, target 30 ms: 200 tokens.
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        assert_eq!(budget.tokens(), INITIAL_TOKENS);
        let settled = converge(&mut budget, 40, 10.0, 0.1, 8);
        assert!((195..=200).contains(&settled), "settled at {settled}");
    }

    #[test]
    fn the_budget_grows_at_most_twofold_per_step() {
        let mut budget = StepBudget::adaptive(4096, Duration::from_millis(1000));
        let mut previous = budget.tokens();
        for _ in 0..10 {
            let tokens = budget.tokens();
            budget.observe(tokens, step_time(1.0, 0.01, tokens));
            assert!(budget.tokens() <= previous * 2);
            previous = budget.tokens();
        }
        assert_eq!(budget.tokens(), 4096, "capped at the ceiling");
    }

    #[test]
    fn a_slower_machine_shrinks_the_budget_at_once() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        converge(&mut budget, 40, 10.0, 0.1, 8);
        // The machine gets four times slower per token (another tenant, a longer context).
        let tokens = budget.tokens();
        budget.observe(tokens, step_time(10.0, 0.4, tokens));
        assert!(budget.tokens() < tokens, "{} after a slow step of {tokens}", budget.tokens());
        let settled = converge(&mut budget, 60, 10.0, 0.4, 8);
        assert!((45..=52).contains(&settled), "settled at {settled}, 50 expected");
    }

    #[test]
    fn decodes_that_alone_exceed_the_target_leave_a_budget_below_them() {
        // 32 decodes take 60 ms against a 30 ms target: 8 tokens would take it (the scheduler
        // still runs every decode and gives prompts their minimum chunk).
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        let settled = converge(&mut budget, 40, 20.0, 1.25, 32);
        assert_eq!(settled, 8);
    }

    #[test]
    fn steps_of_one_size_charge_each_token_its_share() {
        // Every step carries 8 tokens: the fixed cost cannot be told apart, so each token is
        // charged 10 ms / 8 and the budget is what that affords.
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(20));
        for _ in 0..5 {
            budget.observe(8, Duration::from_millis(10));
        }
        assert_eq!(budget.tokens(), 16);
    }

    #[test]
    fn empty_steps_are_not_measured() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(20));
        budget.observe(0, Duration::from_millis(500));
        assert_eq!(budget.tokens(), INITIAL_TOKENS);
    }
}
