//! How many prompt tokens the next step may carry beside its decodes, so that a step's time
//! stays near a target inter-token latency.
//!
//! Every running stream gets one token per step, so a step's duration *is* their inter-token
//! latency. A step costs what its decodes cost plus a cost per prompt token, and the second
//! grows with the prompt's depth (attention over everything before it). [`StepBudget`] keeps
//! two running estimates from the steps it is shown: the cost of a step without prompt work,
//! and the cost per prompt token beyond it; the prompt chunk is what fits in the rest of the
//! target. When the decodes alone take more than half the target (many streams, a slow or
//! busy machine), a step may take up to twice their time instead: a prompt always gets at
//! least half of every step, and the streams' inter-token latency at most doubles while it is
//! prefilled.
//!
//! Costs are measured in the engine thread's CPU time ([`StepTime::cpu`]), not in wall-clock
//! time: on a shared machine a step's wall time mostly says how long other processes held the
//! core, and a controller fed with it resizes the prompt chunk after every descheduled step.
//! The engine thread takes part in every parallel kernel and runs everything serial, so its
//! CPU time is what the step would take on an idle machine. The target is a wall-clock
//! latency, so the budget also keeps a slowly smoothed ratio of wall to CPU time (how busy the
//! machine is) and divides the target by it; the twice-the-decodes rule is a ratio of costs
//! and does not need it. It takes times as input and never reads a clock ([`StepClock`] does),
//! so it is tested with made-up ones.
//!
//! A step without decodes gets the whole `max_batch_tokens`, target or not: no running stream
//! waits on it, only arrivals, which wait for at most that one step (the scheduler admits them
//! ahead of the next chunk of a prompt already started), and a finer chunk makes the prefill
//! itself slower (every step reads every weight for its few tokens). Such a step is not
//! measured for the cost per prompt token: a chunk of thousands of tokens spreads the weights'
//! cost over all of them and says little about the small chunks beside decodes.
//!
//! The same holds for a step whose decodes are all *unprotected* ([`StepDecodes::protected`]):
//! streams that got their first token after the oldest prompt still waiting for its own was
//! submitted (`Scheduler::protected_decodes`), i.e. the first of a burst of prompts that arrived
//! together. Throttling the rest of the burst to spare those first tokens' latency would cost
//! every waiting user their time to first token, and the streams, started one after another,
//! would also end one after another. So a burst is prefilled in as few steps as
//! `max_batch_tokens` allows, and the latency rule applies as soon as one running stream was
//! streaming before the prompt arrived (the streams running when a long prompt is pasted).
//!
//! Without a target the budget is fixed: `max_batch_tokens` tokens a step, decodes first
//! (every one of them: a prompt gets at least one token even when they exceed the budget).

use std::time::{Duration, Instant};

/// Weight of the newest step in the running cost estimates: they mostly reflect the last ~4
/// steps, so a deeper prompt chunk shows within a few steps.
const SMOOTHING: f64 = 0.25;

/// Weight of the newest step in the machine's slowdown (wall over CPU time): one step taken
/// off the core for a while barely moves it, a machine that stays busy shows within ~20 steps.
const SLOWDOWN_SMOOTHING: f64 = 0.05;

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

/// An exponentially weighted running mean, the newest sample weighing `weight`.
fn smooth(estimate: Option<f64>, sample: f64, weight: f64) -> Option<f64> {
    Some(estimate.map_or(sample, |old| old + weight * (sample - old)))
}

/// What a step took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepTime {
    /// Wall-clock time: what a running stream waited for its token.
    pub wall: Duration,
    /// The engine thread's CPU time: what the step's work cost, however busy the machine
    /// (the wall time where the platform has no per-thread CPU clock).
    pub cpu: Duration,
}

impl StepTime {
    /// A step on an idle machine: its CPU time is its wall time.
    #[cfg(test)]
    pub fn idle(elapsed: Duration) -> Self {
        Self { wall: elapsed, cpu: elapsed }
    }
}

/// Measures a step's [`StepTime`] from its start.
pub(crate) struct StepClock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl StepClock {
    pub fn start() -> Self {
        Self { wall: Instant::now(), cpu: thread_cpu_time() }
    }

    pub fn elapsed(&self) -> StepTime {
        let wall = self.wall.elapsed();
        let cpu = match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => wall,
        };
        StepTime { wall, cpu }
    }
}

/// The calling thread's CPU time so far, where the platform has a per-thread CPU clock (also
/// the kernels' speed probes' clock).
#[cfg(target_os = "linux")]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec; the call only writes it.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    let seconds = u64::try_from(now.tv_sec).ok()?;
    let nanos = u32::try_from(now.tv_nsec).ok()?;
    (status == 0).then(|| Duration::new(seconds, nanos))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    None
}

/// A step's decodes, as the budget sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StepDecodes {
    /// Every decode of the step (each costs its share of the step).
    pub total: usize,
    /// Those of streams whose inter-token latency the target protects (at most `total`);
    /// none: the step is sized as if it had no decodes (see the module docs).
    pub protected: usize,
}

impl StepDecodes {
    /// `total` decodes, all of them protected.
    #[cfg(test)]
    pub fn protected(total: usize) -> Self {
        Self { total, protected: total }
    }

    /// Whether the latency target sizes the step: some protected stream waits on it.
    fn latency_bound(self) -> bool {
        self.protected > 0
    }
}

/// The prompt token budget of the next step: fixed, or adapted to a target step time.
#[derive(Debug, Clone)]
pub(crate) struct StepBudget {
    /// Tokens of a step, decodes and prompt together: the budget without a target, the
    /// ceiling with one.
    max_tokens: usize,
    /// Target step time in (wall-clock) seconds.
    target: Option<f64>,
    /// CPU seconds of a step with decodes and no prompt work.
    decode_step: Option<f64>,
    /// CPU seconds per prompt token beyond the decodes.
    per_prompt_token: Option<f64>,
    /// Wall-clock seconds per CPU second of a step: 1 on an idle machine, more on a busy one.
    slowdown: Option<f64>,
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
            slowdown: None,
            largest_measured: 0,
            since_decode_only: 0,
        }
    }

    /// Prompt chunks sized so that a step takes about `target`, at most `max_tokens` tokens a
    /// step.
    pub fn adaptive(max_tokens: usize, target: Duration) -> Self {
        Self { target: Some(target.as_secs_f64()), ..Self::fixed(max_tokens) }
    }

    /// Prompt tokens a step that carries `decodes` may add: all of `max_tokens` beside them when
    /// none is protected; 0 for one step in [`REFRESH_DECODES_EVERY`] + 1 of a long prefill
    /// beside protected decodes (see there), else at least 1.
    pub fn prompt_tokens(&self, decodes: StepDecodes) -> usize {
        let room = self.max_tokens.saturating_sub(decodes.total);
        let Some(target) = self.target.filter(|_| decodes.latency_bound()) else {
            return room.max(1);
        };
        if self.since_decode_only >= REFRESH_DECODES_EVERY {
            return 0;
        }
        let ceiling = (self.largest_measured * MAX_GROWTH).max(INITIAL_PROMPT_TOKENS).min(room).max(1);
        let Some(per_token) = self.per_prompt_token else { return ceiling };
        let decodes_cost = self.decode_step.unwrap_or(0.0);
        // The target in CPU seconds on this machine as busy as it has been lately.
        let target_cost = target / self.slowdown.unwrap_or(1.0);
        let step_cost = target_cost.max(PROMPT_SHARE_FACTOR * decodes_cost);
        let affordable = (step_cost - decodes_cost) / per_token;
        // Saturating float-to-int conversion: an infinite or huge estimate is just the ceiling.
        (affordable.floor() as usize).clamp(1, ceiling)
    }

    /// Records that a step of `decodes` and `prompt_tokens` prompt tokens took `elapsed`.
    pub fn observe(&mut self, decodes: StepDecodes, prompt_tokens: usize, elapsed: StepTime) {
        if self.target.is_none() || decodes.total + prompt_tokens == 0 {
            return;
        }
        let seconds = elapsed.cpu.as_secs_f64();
        if seconds > 0.0 {
            self.slowdown = smooth(self.slowdown, elapsed.wall.as_secs_f64() / seconds, SLOWDOWN_SMOOTHING);
        }
        if prompt_tokens == 0 {
            // After a stretch of prefill the decodes may cost far more than before (longer
            // contexts): the fresh measurement replaces the old estimate.
            let stale = self.since_decode_only >= REFRESH_DECODES_EVERY;
            self.decode_step = if stale { Some(seconds) } else { smooth(self.decode_step, seconds, SMOOTHING) };
            self.since_decode_only = 0;
            return;
        }
        if !decodes.latency_bound() {
            // A lone prompt's chunk, or a burst's beside its own first streams (see the
            // module docs): its cost per token is not that of a small chunk beside decodes.
            return;
        }
        self.since_decode_only += 1;
        let decodes_time = self.decode_step.unwrap_or(0.0);
        // A noisy step can take less than its decodes' estimate: a prompt chunk is taken to
        // cost at least a tenth of its step.
        let per_token = (seconds - decodes_time).max(MIN_PROMPT_SHARE * seconds) / prompt_tokens as f64;
        self.per_prompt_token = smooth(self.per_prompt_token, per_token, SMOOTHING);
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
        fn step(self, decodes: usize, prompt: usize) -> StepTime {
            StepTime::idle(Duration::from_secs_f64(self.ms(decodes, prompt) / 1000.0))
        }

        fn ms(self, decodes: usize, prompt: usize) -> f64 {
            self.fixed_ms + self.per_decode_ms * decodes as f64 + self.per_prompt_ms * prompt as f64
        }
    }

    /// Runs `steps` steps of `decodes` decodes and as many prompt tokens as the budget grants;
    /// returns the last nonzero grant.
    fn run(budget: &mut StepBudget, machine: Machine, decodes: usize, steps: usize) -> usize {
        let mut last = 0;
        for _ in 0..steps {
            let prompt = budget.prompt_tokens(flowing(decodes));
            budget.observe(flowing(decodes), prompt, machine.step(decodes, prompt));
            last = if prompt > 0 { prompt } else { last };
        }
        match budget.prompt_tokens(flowing(decodes)) {
            0 => last,
            grant => grant,
        }
    }

    /// Decode-only steps, as before a long prompt arrives.
    fn decode_only(budget: &mut StepBudget, machine: Machine, decodes: usize, steps: usize) {
        for _ in 0..steps {
            budget.observe(flowing(decodes), 0, machine.step(decodes, 0));
        }
    }

    const MACHINE: Machine = Machine { fixed_ms: 5.0, per_decode_ms: 1.0, per_prompt_ms: 0.5 };

    /// `n` decodes of streams that were streaming before the prompt arrived: every one protected.
    fn flowing(n: usize) -> StepDecodes {
        StepDecodes::protected(n)
    }

    /// `n` decodes of streams of the prompt's own burst: none protected.
    fn starting(n: usize) -> StepDecodes {
        StepDecodes { total: n, protected: 0 }
    }

    #[test]
    fn a_fixed_budget_gives_prompts_what_the_decodes_leave_and_ignores_step_times() {
        let mut budget = StepBudget::fixed(512);
        assert_eq!(budget.prompt_tokens(flowing(0)), 512);
        assert_eq!(budget.prompt_tokens(flowing(8)), 504);
        budget.observe(flowing(8), 504, StepTime::idle(Duration::from_secs(10)));
        assert_eq!(budget.prompt_tokens(flowing(8)), 504);
        assert_eq!(budget.prompt_tokens(flowing(600)), 1, "a prompt still progresses");
    }

    #[test]
    fn the_prompt_chunk_settles_where_a_step_takes_the_target() {
        // 8 decodes take 13 ms; a 30 ms target leaves 17 ms, 34 prompt tokens.
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        decode_only(&mut budget, MACHINE, 8, 5);
        assert_eq!(budget.prompt_tokens(flowing(8)), INITIAL_PROMPT_TOKENS, "nothing measured yet");
        let settled = run(&mut budget, MACHINE, 8, 30);
        assert!((33..=34).contains(&settled), "settled at {settled}");
        assert!(MACHINE.ms(8, settled) <= 30.0 + 1e-9);
    }

    #[test]
    fn a_lone_prompt_gets_the_whole_budget_whatever_the_target_or_the_costs() {
        // 5 ms a prompt token: a 50 ms target alone would leave 10 tokens a step.
        let slow = Machine { per_prompt_ms: 5.0, ..MACHINE };
        let mut budget = StepBudget::adaptive(4096, Duration::from_millis(50));
        let alone = grants_on_a_shared_machine(&mut budget, slow, 0, 5, |i| [1.0, 30.0][i % 2]);
        assert_eq!(alone, vec![4096; 5]);
        assert_eq!(
            StepBudget::adaptive(40, Duration::from_millis(50)).prompt_tokens(flowing(0)),
            40,
            "the ceiling is the budget"
        );
    }

    #[test]
    fn lone_steps_do_not_teach_the_budget_the_cost_of_a_chunk_beside_decodes() {
        // A 4096-token chunk alone, then decodes arrive: the first chunk beside them is the
        // cautious first one, as if nothing had been measured, not 2 x 4096 tokens.
        let mut budget = StepBudget::adaptive(8192, Duration::from_millis(50));
        budget.observe(flowing(0), 4096, MACHINE.step(0, 4096));
        decode_only(&mut budget, MACHINE, 8, 5);
        assert_eq!(budget.prompt_tokens(flowing(8)), INITIAL_PROMPT_TOKENS);
        // Beside decodes the target governs again (13 ms of decodes: 74 tokens in 50 ms).
        let settled = run(&mut budget, MACHINE, 8, 30);
        assert!((73..=74).contains(&settled), "settled at {settled}");
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
        let prompt = budget.prompt_tokens(flowing(8));
        budget.observe(flowing(8), prompt, deeper.step(8, prompt));
        assert!(budget.prompt_tokens(flowing(8)) < before, "shrinks after one slow step");
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
            let prompt = budget.prompt_tokens(flowing(8));
            grants.push(prompt);
            budget.observe(flowing(8), prompt, grown.step(8, prompt));
        }
        // One decode-only step in every 17, and the prompt again gets half of each step
        // (105 ms, 210 tokens), not what a stale 13 ms estimate of the decodes would leave.
        let decode_only_steps = grants.iter().filter(|&&g| g == 0).count();
        assert!((3..=4).contains(&decode_only_steps), "{grants:?}");
        let last = *grants.iter().rev().find(|&&g| g > 0).unwrap();
        assert!((200..=210).contains(&last), "{grants:?}");
    }

    /// Runs `steps` steps on `machine`, the wall time of step `i` stretched by `stretch(i)`
    /// (the machine's other work); returns every grant.
    fn grants_on_a_shared_machine(
        budget: &mut StepBudget,
        machine: Machine,
        decodes: usize,
        steps: usize,
        stretch: impl Fn(usize) -> f64,
    ) -> Vec<usize> {
        (0..steps)
            .map(|i| {
                let prompt = budget.prompt_tokens(flowing(decodes));
                let cost = machine.step(decodes, prompt).cpu;
                budget.observe(flowing(decodes), prompt, StepTime { wall: cost.mul_f64(stretch(i)), cpu: cost });
                prompt
            })
            .collect()
    }

    #[test]
    fn steps_taken_off_the_core_do_not_change_the_prompt_chunks() {
        // 32 decodes cost more than half the 50 ms target, so a step may cost twice their
        // cost: the same chunks whether or not other processes stretch some steps' wall time.
        let mut quiet = StepBudget::adaptive(2048, Duration::from_millis(50));
        let mut shared = quiet.clone();
        decode_only(&mut quiet, MACHINE, 32, 20);
        for i in 0..20 {
            let cost = MACHINE.step(32, 0).cpu;
            let stretch = if i % 3 == 0 { 12.0 } else { 1.0 };
            shared.observe(flowing(32), 0, StepTime { wall: cost.mul_f64(stretch), cpu: cost });
        }
        let quiet_grants = grants_on_a_shared_machine(&mut quiet, MACHINE, 32, 60, |_| 1.0);
        let noise = |i: usize| [1.0, 9.0, 1.3, 1.0, 25.0, 1.1, 4.0][i % 7];
        let shared_grants = grants_on_a_shared_machine(&mut shared, MACHINE, 32, 60, noise);
        assert_eq!(quiet_grants, shared_grants);
        assert!(quiet_grants.iter().any(|&g| g > 0), "{quiet_grants:?}");
    }

    #[test]
    fn a_machine_that_stays_busy_leaves_the_prompt_less_of_the_latency_target() {
        // 8 decodes cost 13 ms; every step takes 1.5 times its cost in wall time, so the 60 ms
        // target is 40 ms of cost: 27 ms, 54 prompt tokens (94 on an idle machine).
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(60));
        let busy = |_| 1.5;
        decode_only(&mut budget, MACHINE, 8, 5);
        let grants = grants_on_a_shared_machine(&mut budget, MACHINE, 8, 200, busy);
        let settled = *grants.iter().rev().find(|&&g| g > 0).unwrap();
        assert!((53..=54).contains(&settled), "{grants:?}");
        assert!(1.5 * MACHINE.ms(8, settled) <= 60.0 + 1e-9);
    }

    #[test]
    fn a_noisy_fast_step_cannot_make_prompt_tokens_free() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        decode_only(&mut budget, MACHINE, 8, 5);
        // 64 prompt tokens in less time than the decodes alone usually take.
        budget.observe(flowing(8), 64, StepTime::idle(Duration::from_millis(10)));
        assert!(budget.prompt_tokens(flowing(8)) <= 128, "{}", budget.prompt_tokens(flowing(8)));
    }

    #[test]
    fn empty_steps_are_not_measured() {
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(20));
        budget.observe(flowing(0), 0, StepTime::idle(Duration::from_millis(500)));
        assert_eq!(budget.prompt_tokens(flowing(8)), INITIAL_PROMPT_TOKENS);
    }

    #[test]
    fn the_grant_stays_within_the_ceiling_and_above_zero() {
        let mut budget = StepBudget::adaptive(100, Duration::from_millis(1000));
        assert_eq!(run(&mut budget, MACHINE, 8, 10), 92, "max_batch_tokens caps decodes and prompt together");
        let slow = Machine { per_prompt_ms: 10_000.0, ..MACHINE };
        assert_eq!(run(&mut budget, slow, 8, 10), 1, "one token a step at worst");
    }

    #[test]
    fn decodes_of_the_bursts_own_streams_leave_it_the_whole_budget() {
        // A settled budget grants 33-34 tokens beside 8 protected decodes (30 ms target); beside
        // 8 decodes of streams that started after the waiting prompts arrived, those prompts
        // get what the decodes leave.
        let mut budget = StepBudget::adaptive(2048, Duration::from_millis(30));
        decode_only(&mut budget, MACHINE, 8, 5);
        let settled = run(&mut budget, MACHINE, 8, 30);
        assert!((33..=34).contains(&settled), "settled at {settled}");
        assert_eq!(budget.prompt_tokens(starting(8)), 2040);
        assert_eq!(
            budget.prompt_tokens(StepDecodes { total: 8, protected: 1 }),
            settled,
            "one protected stream is enough"
        );
        assert_eq!(budget.prompt_tokens(starting(4000)), 1, "a prompt still progresses");
        // Those big steps teach it nothing: beside protected decodes the grant is the same.
        for _ in 0..10 {
            budget.observe(starting(8), 2040, MACHINE.step(8, 2040));
        }
        assert_eq!(budget.prompt_tokens(flowing(8)), settled);
    }
}
