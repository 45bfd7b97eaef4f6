//! Turning a row of logits into the next token: penalties, then greedy or
//! temperature + top-k + top-p + min-p sampling with a seeded per-request RNG.
//!
//! Each request owns its [`Sampler`] and RNG, so its choices depend only on its own logits
//! and seed — never on which other requests share the batch.

use std::collections::HashMap;

use crate::request::{SamplerSettings, TokenLogprobs, TopLogprob};

/// A small, fast, seedable generator (xoshiro256**), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    /// A seed for requests that did not give one.
    pub fn random_seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process and varies per instance.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Per-request sampling state.
#[derive(Debug)]
pub struct Sampler {
    params: SamplerSettings,
    rng: Rng,
    /// How often each token appeared in the generated output (presence/frequency penalties).
    output_counts: HashMap<u32, u32>,
    /// Reused between calls to avoid allocating per token.
    candidates: Vec<(u32, f32)>,
    /// The distinct tokens of the repetition-penalty window (reused between calls).
    penalised: Vec<u32>,
}

/// The outcome of one sampling call.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<TokenLogprobs>,
}

impl Sampler {
    pub fn new(params: impl Into<SamplerSettings>) -> Self {
        let params = params.into();
        let seed = params.seed.unwrap_or_else(Rng::random_seed);
        Self {
            params,
            rng: Rng::seeded(seed),
            output_counts: HashMap::new(),
            candidates: Vec::new(),
            penalised: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplerSettings {
        &self.params
    }

    /// Records a generated token (for presence and frequency penalties).
    pub fn observe(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    /// Picks the next token. `logits` is modified in place (penalties); `history` is the
    /// sequence so far (prompt then output), used by the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Sampled {
        self.adjust_logits(logits, history);
        let logprobs = self.params.logprobs.map(|n| top_logprobs(logits, n));
        let token = if self.params.temperature == 0.0 { argmax(logits) } else { self.sample_stochastic(logits) };
        let logprobs =
            logprobs.map(|(lse, top)| TokenLogprobs { logprob: logits[token as usize] - lse, top, bytes: Vec::new() });
        Sampled { token, logprobs }
    }

    /// Logit bias, then the repetition, presence and frequency penalties, in place.
    fn adjust_logits(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        // Ids were validated against the vocabulary at submit.
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if p.repetition_penalty != 1.0 {
            let window = if p.penalty_last_n == 0 {
                history
            } else {
                &history[history.len().saturating_sub(p.penalty_last_n)..]
            };
            // Penalise each distinct token once, as llama.cpp and transformers do.
            self.penalised.clear();
            self.penalised.extend_from_slice(window);
            self.penalised.sort_unstable();
            self.penalised.dedup();
            for &t in &self.penalised {
                if let Some(l) = logits.get_mut(t as usize) {
                    let penalised = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                    // Any positive penalty is valid, so extreme ones can overflow: saturate so
                    // the token keeps its (extreme) rank instead of becoming an infinity that
                    // top-k, min-p and the softmax cannot weigh.
                    *l = saturate(penalised);
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            // OpenAI semantics: over the generated tokens only.
            for (&t, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }

    fn sample_stochastic(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // min-p keeps tokens with prob >= min_p * p_max, i.e. logit >= max + ln(min_p) * T.
        // Applying it first (O(vocab)) usually leaves a handful of candidates to sort.
        let floor = if p.min_p > 0.0 { max + p.min_p.ln() * p.temperature } else { f32::NEG_INFINITY };
        self.candidates.clear();
        self.candidates.extend(
            logits.iter().enumerate().filter(|(_, &l)| l >= floor && l.is_finite()).map(|(i, &l)| (i as u32, l)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = p.top_k as usize;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);

        // Softmax with temperature over the survivors, then the nucleus cut.
        let top = self.candidates[0].1;
        let mut total = 0.0f64;
        for c in self.candidates.iter_mut() {
            c.1 = (((c.1 - top) * inv_t) as f64).exp() as f32;
            total += c.1 as f64;
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cumulative += c.1 as f64 / total;
                if cumulative >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = self.candidates.iter().map(|c| c.1 as f64).sum();
        }
        let mut target = self.rng.next_f64() * total;
        for c in &self.candidates {
            target -= c.1 as f64;
            if target < 0.0 {
                return c.0;
            }
        }
        self.candidates[self.candidates.len() - 1].0
    }
}

/// `x` limited to the finite range (NaN stays NaN).
fn saturate(x: f32) -> f32 {
    x.clamp(-f32::MAX, f32::MAX)
}

/// Index of the largest logit; ties go to the lowest id so greedy decoding is deterministic.
pub fn argmax(logits: &[f32]) -> u32 {
    // Two passes the compiler vectorises (a single scan that tracks the best index is a serial
    // dependency chain: 3% of a 32-stream decode step): the largest value over 16 lanes, then
    // the first 16-value chunk holding it. NaN never wins (`f32::max` ignores it), ties go to
    // the lowest index, all-NaN gives 0.
    const LANES: usize = 16;
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in chunks.clone() {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(l);
        }
    }
    let max = lanes.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max);
    let first_chunk = chunks.take_while(|chunk| !chunk.iter().fold(false, |found, &l| found | (l == max))).count();
    logits[first_chunk * LANES..].iter().position(|&l| l == max).map_or(0, |i| (first_chunk * LANES + i) as u32)
}

/// log-sum-exp of the row and its `n` most likely tokens with their log-probabilities.
fn top_logprobs(logits: &[f32], n: usize) -> (f32, Vec<TopLogprob>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < n || l > top[top.len() - 1].1 {
                let pos = top.partition_point(|&(_, x)| x >= l);
                top.insert(pos, (i as u32, l));
                top.truncate(n);
            }
        }
    }
    (lse, top.into_iter().map(|(token_id, l)| TopLogprob { token_id, logprob: l - lse, bytes: Vec::new() }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::SamplingParams;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn argmax_is_the_first_index_of_the_largest_non_nan_value() {
        let scan = |logits: &[f32]| {
            let mut best: Option<usize> = None;
            for (i, &l) in logits.iter().enumerate() {
                if !l.is_nan() && best.is_none_or(|b| l > logits[b]) {
                    best = Some(i);
                }
            }
            best.unwrap_or(0) as u32
        };
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN; 40],
            vec![f32::NEG_INFINITY; 33],
            vec![-0.0, 0.0, 0.0],
            vec![f32::NAN, 1.0, f32::NAN, 2.0],
        ];
        // Maxima and ties in the first chunk, the last full chunk and the tail, NaN before them.
        for len in [1usize, 15, 16, 17, 49, 4096 + 5] {
            for at in [0, len / 2, len - 1] {
                let mut logits: Vec<f32> = (0..len).map(|i| ((i * 7919) % 101) as f32 * 0.01 - 0.5).collect();
                logits[at] = 9.0;
                cases.push(logits.clone());
                logits[len - 1 - at] = 9.0;
                logits[0] = f32::NAN;
                cases.push(logits);
            }
        }
        for logits in &cases {
            assert_eq!(argmax(logits), scan(logits), "{:?}", &logits[..logits.len().min(20)]);
        }
    }

    #[test]
    fn greedy_picks_the_max_and_breaks_ties_low() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0], &[]).token, 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| {
                p.temperature = 1.0;
                p.top_k = 0;
                p.min_p = 0.0;
                p.top_p = 1.0;
                p.seed = Some(seed);
            }));
            (0..50).map(|_| s.sample(&mut logits.clone(), &[]).token).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(params(|p| {
            p.top_k = 1;
            p.temperature = 5.0;
            p.seed = Some(1);
        }));
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 2.0, 1.9, 0.0], &[]).token, 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Probabilities ~ [0.88, 0.12, tiny]: top_p 0.5 keeps only the first.
        let mut s = Sampler::new(params(|p| {
            p.top_p = 0.5;
            p.top_k = 0;
            p.min_p = 0.0;
            p.temperature = 1.0;
            p.seed = Some(3);
        }));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [2.0, 0.0, -10.0], &[]).token, 0);
        }
    }

    #[test]
    fn min_p_filters_unlikely_tokens() {
        let mut s = Sampler::new(params(|p| {
            p.min_p = 0.5;
            p.top_k = 0;
            p.top_p = 1.0;
            p.temperature = 1.0;
            p.seed = Some(4);
        }));
        // Token 1 has prob e^-1 ≈ 0.37 of token 0's: filtered at min_p 0.5.
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [1.0, 0.0], &[]).token, 0);
        }
    }

    #[test]
    fn repetition_penalty_discourages_history() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 2.0;
        }));
        assert_eq!(s.sample(&mut [2.0, 1.5], &[0, 0, 0]).token, 1);
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens() {
        let mut banned = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.logit_bias = vec![(0, -100.0)];
        }));
        assert_eq!(banned.sample(&mut [5.0, 1.0, 0.0], &[]).token, 1);
        let mut forced = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.logit_bias = vec![(2, 100.0)];
        }));
        assert_eq!(forced.sample(&mut [5.0, 1.0, 0.0], &[]).token, 2);
    }

    #[test]
    fn frequency_penalty_counts_output() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.frequency_penalty = 1.0;
        }));
        s.observe(0);
        s.observe(0);
        assert_eq!(s.sample(&mut [2.0, 0.5], &[]).token, 1);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let mut s = Sampler::new(params(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(2);
        }));
        let out = s.sample(&mut [0.0, 1.0, 2.0], &[]);
        let lp = out.logprobs.unwrap();
        assert_eq!(out.token, 2);
        assert_eq!(lp.top.iter().map(|t| t.token_id).collect::<Vec<_>>(), vec![2, 1]);
        let total: f32 = [0.0f32, 1.0, 2.0].iter().map(|l| (l - (2.0 - lp.logprob)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    /// Tokens the sampler may return for `logits` (already adjusted by the penalties): finite,
    /// not cut by top-k, min-p or top-p. Computed independently of the sampler, in f64, and
    /// generous at the boundaries (`slack`), where rounding may decide either way.
    fn allowed(logits: &[f32], p: &SamplingParams) -> Vec<u32> {
        let slack = 1e-4;
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let Some(&best) = order.first() else { return vec![] };
        if p.temperature == 0.0 {
            return vec![best as u32];
        }
        let max = logits[best] as f64;
        let t = p.temperature as f64;
        // Relative weights exp((l - max) / T), computed in f64 (T >= MIN_TEMPERATURE, so finite).
        let weight = |i: usize| ((logits[i] as f64 - max) / t).exp();
        let min_p_ok = |i: usize| p.min_p == 0.0 || weight(i) >= p.min_p as f64 * (1.0 - slack) - 1e-30;
        let mut survivors: Vec<usize> = order.into_iter().filter(|&i| min_p_ok(i)).collect();
        if p.top_k > 0 {
            // Ties at the k-th logit may go either way.
            if let Some(&kth) = survivors.get(p.top_k as usize - 1) {
                survivors.retain(|&i| logits[i] >= logits[kth]);
            }
        }
        let total: f64 = survivors.iter().map(|&i| weight(i)).sum();
        // A token is in the nucleus if the mass strictly more likely than it is below top_p.
        survivors
            .iter()
            .filter(|&&i| {
                let above: f64 = survivors.iter().filter(|&&j| logits[j] > logits[i]).map(|&j| weight(j)).sum();
                above / total < p.top_p as f64 + slack
            })
            .map(|&i| i as u32)
            .collect()
    }

    /// Random valid parameters, biased towards the edges (tiny temperatures and top_p,
    /// extreme penalties) where arithmetic breaks first.
    fn random_params(rng: &mut Rng, vocab: usize) -> SamplingParams {
        let mut pick = |choices: &[f32]| choices[(rng.next_u64() % choices.len() as u64) as usize];
        let temperature = pick(&[0.0, crate::request::MIN_TEMPERATURE, 1e-30, 1e-6, 0.1, 0.8, 1.0, 2.0, 1e6, 1e30]);
        let top_p = pick(&[1e-30, 1e-6, 0.1, 0.5, 0.95, 1.0]);
        let min_p = pick(&[0.0, 1e-38, 1e-6, 0.05, 0.5, 1.0]);
        let repetition_penalty = pick(&[1e-38, 1e-6, 0.5, 1.0, 1.3, 1e6, 1e38]);
        let presence_penalty = pick(&[-2.0, 0.0, 1.5, 2.0]);
        let frequency_penalty = pick(&[-2.0, 0.0, 0.7, 2.0]);
        let bias = pick(&[-100.0, -1.0, 0.0, 50.0, 100.0]);
        let top_k = (rng.next_u64() % 6) as u32 * (rng.next_u64() % 3) as u32;
        let biased_token = (rng.next_u64() % vocab as u64) as u32;
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            penalty_last_n: (rng.next_u64() % 4) as usize,
            seed: Some(rng.next_u64()),
            logprobs: Some(3),
            logit_bias: vec![(biased_token, bias)],
            ..SamplingParams::default()
        }
    }

    /// Random finite logits over a wide range, with ties.
    fn random_logits(rng: &mut Rng, vocab: usize) -> Vec<f32> {
        let scale = [1e-30f32, 1.0, 10.0, 1e4, 1e30][(rng.next_u64() % 5) as usize];
        (0..vocab).map(|_| ((rng.next_u64() % 64) as f32 - 32.0) * 0.25 * scale).collect()
    }

    #[test]
    fn any_valid_parameters_sample_an_allowed_token_with_finite_logprobs() {
        let mut rng = Rng::seeded(17);
        for case in 0..4000 {
            let vocab = 1 + (rng.next_u64() % 40) as usize;
            let params = random_params(&mut rng, vocab);
            params.validate(vocab).unwrap_or_else(|e| panic!("case {case}: {params:?} should be valid: {e}"));
            let history: Vec<u32> = (0..(rng.next_u64() % 6)).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            let mut sampler = Sampler::new(params.clone());
            for &t in &history {
                sampler.observe(t);
            }
            let mut logits = random_logits(&mut rng, vocab);
            let original = logits.clone();
            let sampled = sampler.sample(&mut logits, &history);
            // `logits` now holds the adjusted values the sampler chose from.
            assert!(logits.iter().all(|l| l.is_finite()), "case {case}: {params:?} made a logit non-finite");
            let allowed = allowed(&logits, &params);
            assert!(
                allowed.contains(&sampled.token),
                "case {case}: token {} not in {allowed:?}\nparams {params:?}\nlogits {original:?}\nadjusted {logits:?}",
                sampled.token
            );
            let logprobs = sampled.logprobs.expect("logprobs were asked for");
            assert!(logprobs.logprob <= 0.0 && !logprobs.logprob.is_nan(), "case {case}: {logprobs:?}");
        }
    }

    #[test]
    fn temperature_towards_zero_tends_to_greedy() {
        let mut rng = Rng::seeded(5);
        for case in 0..300 {
            let vocab = 2 + (rng.next_u64() % 30) as usize;
            let mut logits: Vec<f32> = (0..vocab).map(|_| ((rng.next_u64() % 64) as f32 - 32.0) * 0.25).collect();
            // A unique maximum, one unit above the rest.
            let best = (rng.next_u64() % vocab as u64) as usize;
            logits[best] = logits.iter().copied().fold(f32::MIN, f32::max) + 1.0;
            for temperature in [crate::request::MIN_TEMPERATURE, 1e-20, 1e-3, 0.01] {
                let mut sampler = Sampler::new(params(|p| {
                    p.temperature = temperature;
                    p.top_k = 0;
                    p.top_p = 1.0;
                    p.min_p = 0.0;
                    p.seed = Some(case);
                }));
                for _ in 0..20 {
                    assert_eq!(sampler.sample(&mut logits.clone(), &[]).token, best as u32, "T = {temperature:e}");
                }
            }
        }
        // And the other way: at T = 1 the same kind of logits do not always give the maximum.
        let mut sampler = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.top_k = 0;
            p.top_p = 1.0;
            p.min_p = 0.0;
            p.seed = Some(1);
        }));
        let tokens: std::collections::HashSet<u32> =
            (0..200).map(|_| sampler.sample(&mut [1.0, 0.0, 0.5], &[]).token).collect();
        assert_eq!(tokens.len(), 3);
    }

    #[test]
    fn the_smallest_valid_temperature_still_picks_the_most_likely_token() {
        // Before the bound, T = 1e-40 gave 1/T = inf, the top weight (0 * inf) NaN, and the
        // least likely candidate won.
        let p = params(|p| {
            p.temperature = crate::request::MIN_TEMPERATURE;
            p.seed = Some(2);
        });
        p.validate(3).expect("MIN_TEMPERATURE is valid");
        let mut s = Sampler::new(p);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 3.0, 2.9], &[]).token, 1);
        }
    }

    #[test]
    fn temperatures_whose_inverse_overflows_are_rejected_naming_temperature() {
        for t in [1e-40f32, f32::from_bits(1), f32::MIN_POSITIVE / 2.0] {
            let error = params(|p| p.temperature = t).validate(10).expect_err("subnormal temperature");
            assert_eq!(error.param(), Some("temperature"), "{error}");
            assert!(error.to_string().contains("inverse must be finite"), "{error}");
        }
        params(|p| p.temperature = 0.0).validate(10).expect("0 is greedy");
        params(|p| p.temperature = -0.0).validate(10).expect("-0 is greedy");
    }

    #[test]
    fn extreme_repetition_penalties_keep_logits_finite_and_ranked() {
        for (penalty, expected) in [(1e-38f32, 0u32), (1e38, 1)] {
            let mut s = Sampler::new(params(|p| {
                p.temperature = 0.0;
                p.repetition_penalty = penalty;
            }));
            // Token 0 (in the history) has a positive logit, token 2 (also) a negative one;
            // divided or multiplied by the penalty, either would overflow f32.
            let mut logits = [20.0, 10.0, -30.0];
            assert_eq!(s.sample(&mut logits, &[0, 2]).token, expected, "penalty {penalty:e}");
            assert!(logits.iter().all(|l| l.is_finite()), "{logits:?}");
        }
    }
}
