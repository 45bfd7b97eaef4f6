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
    /// Candidates whose weight cannot change the draw unless it reaches them, in id order
    /// (see [`Sampler::order_candidates`]; reused between calls).
    negligible: Vec<(u32, f32)>,
    /// The radix sort's second buffer (reused between calls).
    scratch: Vec<(u32, f32)>,
    /// The largest candidate logit of the current draw.
    top_logit: f32,
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
            negligible: Vec::new(),
            scratch: Vec::new(),
            top_logit: 0.0,
        }
    }

    pub fn params(&self) -> &SamplerSettings {
        &self.params
    }

    /// Records a generated token (for presence and frequency penalties).
    pub fn observe(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    /// Whether [`Self::sample`] picks exactly [`argmax`] of the raw logits and returns nothing
    /// else: greedy (temperature 0), no log-probabilities, no logit bias, no repetition,
    /// presence or frequency penalty, no output constraint. Then the output head may find the
    /// argmax while computing the row and never write the row's logits
    /// ([`crate::models::LogitRows`]).
    pub fn picks_raw_argmax(&self) -> bool {
        let p = &self.params;
        p.temperature == 0.0
            && p.logprobs.is_none()
            && p.logit_bias.is_empty()
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
            && p.constraint.is_none()
    }

    /// What [`Self::sample`] returns for a row whose raw argmax is `token`, for a sampler that
    /// [`Self::picks_raw_argmax`].
    pub fn sampled_raw_argmax(&self, token: u32) -> Sampled {
        debug_assert!(self.picks_raw_argmax(), "the logits were needed");
        Sampled { token, logprobs: None }
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
        self.draw_stochastic(logits).token
    }

    fn draw_stochastic(&mut self, logits: &[f32]) -> Draw {
        let p = &self.params;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // min-p keeps tokens with prob >= min_p * p_max, i.e. logit >= max + ln(min_p) * T.
        // Applying it first (O(vocab)) usually leaves a handful of candidates to sort.
        let floor = if p.min_p > 0.0 { max + p.min_p.ln() * p.temperature } else { f32::NEG_INFINITY };
        self.candidates.clear();
        self.candidates.extend(
            logits.iter().enumerate().filter(|(_, &l)| l >= floor && l.is_finite()).map(|(i, &l)| (i as u32, l)),
        );
        if self.candidates.is_empty() {
            return Draw { token: argmax(logits), total: 0.0 };
        }
        let k = p.top_k as usize;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
            self.candidates.sort_unstable_by(by_logit_desc);
            self.negligible.clear();
        } else {
            self.order_candidates();
        }
        self.draw()
    }

    /// Puts the candidates (in id order, as collected) in the order the draw walks them:
    /// logit descending, ties by id ascending, as one full sort would, but without sorting
    /// what cannot matter. A candidate whose weight (below) is under [`NEGLIGIBLE_WEIGHT`]
    /// changes neither the total nor the walk before the walk reaches it (see
    /// [`NEGLIGIBLE_WEIGHT`]), and all of them come after all the others in that order, so they
    /// wait, in id order, in `negligible` and are ordered only if the walk gets there
    /// ([`Self::append_negligible`]). The others are ordered by [`sort_by_logit_desc`], which
    /// gives the same order as the comparison sort in linear time. With a temperature of 1 and
    /// a 262,144-token vocabulary this replaced a full sort per token.
    fn order_candidates(&mut self) {
        let is_significant = significance_fn(&self.candidates, self.params.temperature);
        let negligible = &mut self.negligible;
        negligible.clear();
        self.candidates.retain(|&c| {
            let keep = is_significant(c.1);
            if !keep {
                negligible.push(c);
            }
            keep
        });
        sort_by_logit_desc(&mut self.candidates, &mut self.scratch);
    }

    /// Orders the negligible candidates and appends them (the walk reached them).
    fn append_negligible(&mut self) {
        sort_by_logit_desc(&mut self.negligible, &mut self.scratch);
        let start = self.candidates.len();
        self.candidates.append(&mut self.negligible);
        let (top, inv_t) = (self.top_logit, 1.0 / self.params.temperature);
        for c in &mut self.candidates[start..] {
            c.1 = weight(c.1, top, inv_t);
        }
    }

    /// Softmax with temperature over the ordered candidates, the nucleus cut, then one draw.
    fn draw(&mut self) -> Draw {
        let inv_t = 1.0 / self.params.temperature;
        let top_p = self.params.top_p;
        // The first candidate has the largest logit.
        let top = self.candidates[0].1;
        self.top_logit = top;
        let mut total = 0.0f64;
        for c in self.candidates.iter_mut() {
            c.1 = weight(c.1, top, inv_t);
            total += c.1 as f64;
        }
        if top_p < 1.0 {
            let mut cumulative = 0.0f64;
            let mut keep = None;
            let mut i = 0;
            while keep.is_none() {
                if i == self.candidates.len() {
                    if self.negligible.is_empty() {
                        break;
                    }
                    self.append_negligible();
                }
                cumulative += self.candidates[i].1 as f64 / total;
                i += 1;
                if cumulative >= top_p as f64 {
                    keep = Some(i);
                }
            }
            if let Some(keep) = keep {
                self.candidates.truncate(keep);
                self.negligible.clear();
            }
            total = self.candidates.iter().map(|c| c.1 as f64).sum();
        }
        let mut target = self.rng.next_f64() * total;
        let mut i = 0;
        loop {
            if i == self.candidates.len() {
                if self.negligible.is_empty() {
                    break;
                }
                self.append_negligible();
            }
            target -= self.candidates[i].1 as f64;
            if target < 0.0 {
                return Draw { token: self.candidates[i].0, total };
            }
            i += 1;
        }
        Draw { token: self.candidates[self.candidates.len() - 1].0, total }
    }
}

/// A stochastic draw: the token, and the total weight it was drawn against (which the tests
/// hold to the full sort's bit for bit, a far finer check than the token).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Draw {
    token: u32,
    total: f64,
}

/// The order the draw walks candidates in: logit descending, ties by id ascending.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// A candidate's unnormalised probability relative to the most likely one (`top`), as f32.
/// Monotone in `logit`: a larger logit never gets a smaller weight.
fn weight(logit: f32, top: f32, inv_t: f32) -> f32 {
    (((logit - top) * inv_t) as f64).exp() as f32
}

/// Whether a logit of `candidates` has a [`weight`] of at least [`NEGLIGIBLE_WEIGHT`], where
/// the top is their largest logit (by [`f32::total_cmp`], as the order has it). The exponent
/// alone decides all but a sliver around ln 2^-53 = -36.74 (e^-36.5 > 2^-53 > e^-37, and
/// both the exponential and the rounding to f32 are monotone), so the exponential is only
/// taken there, not for every token of the vocabulary.
fn significance_fn(candidates: &[(u32, f32)], temperature: f32) -> impl Fn(f32) -> bool {
    let top = candidates.iter().map(|c| c.1).max_by(f32::total_cmp).unwrap_or(0.0);
    let inv_t = 1.0 / temperature;
    move |logit| {
        let exponent = (logit - top) * inv_t;
        if exponent > -36.5 {
            true
        } else if exponent < -37.0 {
            false
        } else {
            weight(logit, top, inv_t) >= NEGLIGIBLE_WEIGHT
        }
    }
}

/// 2^-53: a weight below it cannot change the total the draw normalises by. The total adds
/// the weights in the walk's order (descending), starting from the top candidate's weight,
/// exactly 1, so every running total is at least 1, whose f64 spacing is at least 2^-52;
/// adding a non-negative value under half the spacing rounds back to the same total, and
/// every weight after the first such one is as small. So the total over all candidates equals
/// the total over those at or above this weight. The nucleus cut and the walk need the rest
/// only if they run past all the others (the walk only by rounding); then the rest are
/// ordered and the same loop goes on over them, as it would have over the full sort.
const NEGLIGIBLE_WEIGHT: f32 = 1.0 / (1u64 << 53) as f32;

/// Sorts `items` by [`by_logit_desc`] when `items` is in ascending id order (as collected):
/// the comparison sort for a few items, else a stable least-significant-digit radix sort on
/// the logits' order-preserving bit patterns, which keeps equal logits in id order and so
/// gives exactly the comparison sort's order (a strict total order has one sorted
/// permutation). `scratch` is reused between calls.
fn sort_by_logit_desc(items: &mut Vec<(u32, f32)>, scratch: &mut Vec<(u32, f32)>) {
    const RADIX_FROM: usize = 512;
    const DIGIT_BITS: u32 = 11;
    const BUCKETS: usize = 1 << DIGIT_BITS;
    debug_assert!(items.windows(2).all(|w| w[0].0 < w[1].0), "ids ascending");
    if items.len() < RADIX_FROM {
        items.sort_unstable_by(by_logit_desc);
        return;
    }
    // `total_cmp` orders floats as these keys order (sign-magnitude to two's complement);
    // inverted for descending.
    let key = |l: f32| {
        let bits = l.to_bits();
        let ascending = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
        !ascending
    };
    scratch.clear();
    scratch.resize(items.len(), (0, 0.0));
    let mut shift = 0;
    while shift < 32 {
        let digit = |l: f32| ((key(l) >> shift) as usize) & (BUCKETS - 1);
        let mut counts = [0usize; BUCKETS];
        for c in items.iter() {
            counts[digit(c.1)] += 1;
        }
        // A digit every item shares leaves the order as it is.
        if counts.contains(&items.len()) {
            shift += DIGIT_BITS;
            continue;
        }
        let mut next = 0;
        for n in counts.iter_mut() {
            let start = next;
            next += *n;
            *n = start;
        }
        for &c in items.iter() {
            let d = digit(c.1);
            scratch[counts[d]] = c;
            counts[d] += 1;
        }
        std::mem::swap(items, scratch);
        shift += DIGIT_BITS;
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

/// Whether `value`, at an index after every one offered so far, replaces `best` in a running
/// argmax: only when strictly larger (ties keep the earlier index) or when there is no best yet
/// (NaN); NaN itself never wins.
#[inline(always)]
fn beats(value: f32, best: f32) -> bool {
    !value.is_nan() && (best.is_nan() || value > best)
}

/// [`argmax`] of a row that arrives in pieces in index order (the output head computes it
/// on several threads, each piece's best found by a [`LaneArgmax`]): the first index of the
/// largest non-NaN value so far, 0 while every value was NaN. Pieces of one row merged in
/// index order give the index [`argmax`] gives over the whole row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RunningArgmax {
    /// NaN until a non-NaN value was offered.
    value: f32,
    index: u32,
}

impl RunningArgmax {
    /// Nothing offered yet.
    pub(crate) const NONE: Self = Self { value: f32::NAN, index: 0 };

    /// Offers the best of a later piece, as another [`RunningArgmax`] found it.
    pub(crate) fn merge(&mut self, later: RunningArgmax) {
        if beats(later.value, self.value) {
            *self = later;
        }
    }

    pub(crate) fn index(&self) -> u32 {
        self.index
    }
}

/// [`RunningArgmax`] of a row whose values arrive `W` at a time as the matmul kernels produce
/// them (`W` consecutive indices, one per lane), kept per lane in registers' worth of state
/// instead of written to a buffer and scanned: each lane keeps the first index of its largest
/// non-NaN value (values offered to a lane must come in increasing index order), and
/// [`Self::best`] picks the largest over the lanes, ties to the lowest index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneArgmax<const W: usize> {
    /// NaN in a lane until a non-NaN value was offered to it.
    values: [f32; W],
    indices: [u32; W],
}

impl<const W: usize> LaneArgmax<W> {
    /// Nothing offered yet.
    pub(crate) const NONE: Self = Self { values: [f32::NAN; W], indices: [0; W] };

    /// Offers `values[j]` at index `first + j` to lane `j`, for the first `values.len()` lanes
    /// (fewer than `W` for a matrix's last rows; the portable path of [`Self::offer_tile`]).
    pub(crate) fn offer(&mut self, first: usize, values: &[f32]) {
        let lanes = self.values.iter_mut().zip(&mut self.indices);
        for (j, ((best, index), &v)) in lanes.zip(values).enumerate() {
            if beats(v, *best) {
                *best = v;
                *index = (first + j) as u32;
            }
        }
    }

    /// [`Self::offer`] of each row of a kernel tile: `tile[r]` (values from index `first` on)
    /// to `lanes[r]`. One SIMD compare per row where the CPU has it (AVX-512 for 16 lanes,
    /// AVX2 for 8); the lanes are only written when a value wins, which is rare once a row's
    /// large values were seen.
    #[inline(always)]
    pub(crate) fn offer_tile(lanes: &mut [Self], first: usize, tile: &[[f32; W]]) {
        assert!(lanes.len() >= tile.len(), "a lane set per tile row");
        #[cfg(target_arch = "x86_64")]
        {
            let first = first as u32;
            if W == 16 && lanes_x86::has_avx512() {
                // SAFETY: `W` is 16, so the pointers are to the types the kernel takes, and
                // `lanes` holds at least `tile.len()` of them (asserted); the CPU has AVX-512F.
                unsafe { lanes_x86::offer_tile_16(lanes.as_mut_ptr().cast(), first, tile.as_ptr().cast(), tile.len()) };
                return;
            }
            if W == 8 && lanes_x86::has_avx2() {
                // SAFETY: as above, for `W` 8 and AVX2.
                unsafe { lanes_x86::offer_tile_8(lanes.as_mut_ptr().cast(), first, tile.as_ptr().cast(), tile.len()) };
                return;
            }
        }
        lanes.iter_mut().zip(tile).for_each(|(lanes, values)| lanes.offer(first, values));
    }

    /// The best over the lanes: the largest non-NaN value, ties to the lowest index.
    pub(crate) fn best(&self) -> RunningArgmax {
        let mut best = RunningArgmax::NONE;
        for (&value, &index) in self.values.iter().zip(&self.indices) {
            let larger = value > best.value || (value == best.value && index < best.index);
            if !value.is_nan() && (best.value.is_nan() || larger) {
                best = RunningArgmax { value, index };
            }
        }
        best
    }
}

/// [`LaneArgmax::offer_tile`]'s SIMD kernels: [`beats`] per lane, as `!(v <= best)` (the
/// unordered "not less or equal" compare: true where the lane has no value yet, whose best is
/// NaN) masked by "`v` is not NaN".
#[cfg(target_arch = "x86_64")]
mod lanes_x86 {
    use super::LaneArgmax;
    use std::arch::x86_64::*;

    pub(super) fn has_avx512() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    pub(super) fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
    }

    /// `count` rows of 16 values from `tile` into the lanes at `lanes`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `lanes` and `tile` point to `count` valid items each.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn offer_tile_16(lanes: *mut LaneArgmax<16>, first: u32, tile: *const [f32; 16], count: usize) {
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let indices = _mm512_add_epi32(_mm512_set1_epi32(first as i32), iota);
        for r in 0..count {
            // SAFETY: `r < count` (the caller's promise).
            let (lanes, values) = unsafe { (&mut *lanes.add(r), &*tile.add(r)) };
            let v = unsafe { _mm512_loadu_ps(values.as_ptr()) };
            let best = unsafe { _mm512_loadu_ps(lanes.values.as_ptr()) };
            let wins = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(v, best);
            let wins = _mm512_mask_cmp_ps_mask::<_CMP_ORD_Q>(wins, v, v);
            if wins != 0 {
                unsafe {
                    _mm512_mask_storeu_ps(lanes.values.as_mut_ptr(), wins, v);
                    _mm512_mask_storeu_epi32(lanes.indices.as_mut_ptr().cast(), wins, indices);
                }
            }
        }
    }

    /// `count` rows of 8 values from `tile` into the lanes at `lanes`.
    ///
    /// # Safety
    /// The CPU has AVX2; `lanes` and `tile` point to `count` valid items each.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn offer_tile_8(lanes: *mut LaneArgmax<8>, first: u32, tile: *const [f32; 8], count: usize) {
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let indices = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_set1_epi32(first as i32), iota));
        for r in 0..count {
            // SAFETY: `r < count` (the caller's promise).
            let (lanes, values) = unsafe { (&mut *lanes.add(r), &*tile.add(r)) };
            let v = unsafe { _mm256_loadu_ps(values.as_ptr()) };
            let best = unsafe { _mm256_loadu_ps(lanes.values.as_ptr()) };
            let wins = _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(v, best), _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            if _mm256_movemask_ps(wins) != 0 {
                unsafe {
                    let old = _mm256_loadu_ps(lanes.indices.as_ptr().cast());
                    _mm256_storeu_ps(lanes.values.as_mut_ptr(), _mm256_blendv_ps(best, v, wins));
                    _mm256_storeu_ps(lanes.indices.as_mut_ptr().cast(), _mm256_blendv_ps(old, indices, wins));
                }
            }
        }
    }
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

    /// Rows with ties, NaN and infinities where the head's tiles and tasks could split them.
    fn rows_with_ties_and_nan(rng: &mut Rng) -> Vec<Vec<f32>> {
        let mut rows = vec![vec![f32::NAN; 40], vec![f32::NEG_INFINITY; 33], vec![-0.0, 0.0, 0.0], vec![]];
        for len in [1usize, 17, 64, 1000] {
            for _ in 0..20 {
                // Few distinct values: the maximum repeats (ties across pieces).
                let mut row: Vec<f32> = (0..len).map(|_| (rng.next_u64() % 5) as f32).collect();
                for _ in 0..rng.next_u64() % 4 {
                    let at = (rng.next_u64() % len as u64) as usize;
                    row[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][(rng.next_u64() % 3) as usize];
                }
                rows.push(row);
            }
        }
        rows
    }

    /// Offers `row` to a [`LaneArgmax`] `W` values at a time from index `first` on (a
    /// partial offer for a last piece shorter than `W`), by the tile path (SIMD where the CPU
    /// has it) or the portable one.
    fn offer_in_lanes<const W: usize>(lanes: &mut LaneArgmax<W>, first: usize, row: &[f32], tile: bool) {
        for (i, piece) in row.chunks(W).enumerate() {
            match <&[f32; W]>::try_from(piece) {
                Ok(full) if tile => LaneArgmax::offer_tile(std::slice::from_mut(lanes), first + i * W, &[*full]),
                Ok(full) => lanes.offer(first + i * W, full),
                Err(_) => lanes.offer(first + i * W, piece),
            }
        }
    }

    /// The index the head picks from `row` split at `cuts` (its tasks' pieces, merged in
    /// order), each task offering its piece in two runs of `W`-lane tiles.
    fn argmax_in_lanes<const W: usize>(row: &[f32], cuts: &[usize], tile: bool) -> u32 {
        let mut merged = RunningArgmax::NONE;
        for piece in cuts.windows(2) {
            let mut task = LaneArgmax::<W>::NONE;
            let middle = (piece[0] + piece[1]) / 2;
            offer_in_lanes(&mut task, piece[0], &row[piece[0]..middle], tile);
            offer_in_lanes(&mut task, middle, &row[middle..piece[1]], tile);
            merged.merge(task.best());
        }
        merged.index()
    }

    #[test]
    fn a_row_offered_in_pieces_gives_the_argmax_of_the_whole_row() {
        let mut rng = Rng::seeded(11);
        for row in rows_with_ties_and_nan(&mut rng) {
            // Random cut points (whole lane groups or not); the head's lane widths.
            let mut cuts: Vec<usize> =
                (0..rng.next_u64() % 6).map(|_| (rng.next_u64() as usize) % (row.len() + 1)).collect();
            cuts.extend([0, row.len()]);
            cuts.sort_unstable();
            for tile in [false, true] {
                let what = format!("tile path {tile}: {row:?} cut at {cuts:?}");
                assert_eq!(argmax_in_lanes::<8>(&row, &cuts, tile), argmax(&row), "8 lanes, {what}");
                assert_eq!(argmax_in_lanes::<16>(&row, &cuts, tile), argmax(&row), "16 lanes, {what}");
            }
        }
    }

    #[test]
    fn only_plain_greedy_settings_pick_the_raw_argmax() {
        let picks = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams::greedy();
            f(&mut p);
            Sampler::new(p).picks_raw_argmax()
        };
        assert!(picks(|_| {}), "plain greedy");
        // Settings that change nothing else keep it.
        assert!(picks(|p| p.top_k = 5), "top-k is moot at temperature 0");
        assert!(picks(|p| p.seed = Some(3)), "the seed is moot at temperature 0");
        type Setting = fn(&mut SamplingParams);
        let excluded: [(&str, Setting); 7] = [
            ("temperature", |p| p.temperature = 0.7),
            ("logprobs", |p| p.logprobs = Some(0)),
            ("logit_bias", |p| p.logit_bias = vec![(3, 0.0)]),
            ("repetition_penalty", |p| p.repetition_penalty = 1.1),
            ("presence_penalty", |p| p.presence_penalty = 0.5),
            ("frequency_penalty", |p| p.frequency_penalty = -0.5),
            ("constraint", |p| p.constraint = Some(crate::constraint::Constraint::Regex("a+".into()))),
        ];
        for (what, set) in excluded {
            assert!(!picks(set), "{what} needs the logits");
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

    /// The stochastic draw as it was before the selection: every candidate sorted by
    /// [`by_logit_desc`] (kept here, verbatim but for the names and the returned total, as the
    /// reference the faster draw must agree with token for token and total for total).
    fn full_sort_draw(p: &SamplingParams, rng: &mut Rng, logits: &[f32]) -> Draw {
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = if p.min_p > 0.0 { max + p.min_p.ln() * p.temperature } else { f32::NEG_INFINITY };
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l >= floor && l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return Draw { token: argmax(logits), total: 0.0 };
        }
        let k = p.top_k as usize;
        if k > 0 && k < candidates.len() {
            candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            candidates.truncate(k);
        }
        candidates.sort_unstable_by(by_logit_desc);
        let top = candidates[0].1;
        let mut total = 0.0f64;
        for c in candidates.iter_mut() {
            c.1 = (((c.1 - top) * inv_t) as f64).exp() as f32;
            total += c.1 as f64;
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0f64;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                cumulative += c.1 as f64 / total;
                if cumulative >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|c| c.1 as f64).sum();
        }
        let mut target = rng.next_f64() * total;
        for c in &candidates {
            target -= c.1 as f64;
            if target < 0.0 {
                return Draw { token: c.0, total };
            }
        }
        Draw { token: candidates[candidates.len() - 1].0, total }
    }

    /// Logits shaped like a language model's (a bulk around 0, a few far above it), or flat,
    /// or coarse enough for many ties, signed zeros included.
    fn shaped_logits(rng: &mut Rng, vocab: usize, shape: usize) -> Vec<f32> {
        let mut uniform = || rng.next_f64() as f32;
        (0..vocab)
            .map(|_| match shape {
                // Bulk N(0, ~3) with a tail of strong candidates.
                0 => {
                    let bulk = (uniform() + uniform() + uniform() + uniform() - 2.0) * 5.0;
                    if uniform() < 0.001 {
                        bulk + 15.0 + 10.0 * uniform()
                    } else {
                        bulk
                    }
                }
                // Spread wide enough that most of the vocabulary is negligible.
                1 => -60.0 * uniform() * uniform(),
                // Quantized to quarters: ties everywhere, signed zeros among them.
                2 => {
                    let q = ((uniform() * 16.0) as i32 - 8) as f32 * 0.25;
                    if q == 0.0 && uniform() < 0.5 {
                        -0.0
                    } else {
                        q
                    }
                }
                // Nearly flat.
                _ => uniform() * 1e-3,
            })
            .collect()
    }

    #[test]
    fn the_selection_draws_what_the_full_sort_drew() {
        let mut rng = Rng::seeded(2026);
        let mut draws = 0;
        for vocab in [1usize, 7, 511, 512, 3000, 40_000, 262_144] {
            let cases = if vocab > 100_000 { 6 } else { 60 };
            for case in 0..cases {
                let shape = case % 4;
                let logits = shaped_logits(&mut rng, vocab, shape);
                let pick = |rng: &mut Rng, choices: &[f32]| choices[(rng.next_u64() % choices.len() as u64) as usize];
                let p = params(|p| {
                    p.temperature =
                        pick(&mut rng, &[crate::request::MIN_TEMPERATURE, 0.05, 0.3, 0.7, 1.0, 1.5, 4.0, 1e6]);
                    p.top_p = pick(&mut rng, &[1.0, 1.0, 0.999, 0.95, 0.5, 1e-6]);
                    p.min_p = pick(&mut rng, &[0.0, 0.0, 0.0, 0.05]);
                    p.top_k = [0u32, 0, 0, 1, 40, vocab as u32 + 1][(rng.next_u64() % 6) as usize];
                    p.seed = Some(rng.next_u64());
                });
                let mut sampler = Sampler::new(p.clone());
                let mut reference_rng = Rng::seeded(p.seed.expect("seeded"));
                let steps = if vocab > 100_000 { 4 } else { 25 };
                for step in 0..steps {
                    let expected = full_sort_draw(&p, &mut reference_rng, &logits);
                    let got = sampler.draw_stochastic(&logits);
                    assert_eq!(got.token, expected.token, "vocab {vocab} case {case} step {step} shape {shape} {p:?}");
                    assert_eq!(
                        got.total.to_bits(),
                        expected.total.to_bits(),
                        "total {} against {}: vocab {vocab} case {case} step {step} shape {shape} {p:?}",
                        got.total,
                        expected.total
                    );
                    draws += 1;
                }
            }
        }
        assert!(draws > 1000);
    }

    #[test]
    fn the_radix_order_is_the_comparison_order() {
        let mut rng = Rng::seeded(11);
        for len in [0usize, 1, 511, 512, 513, 5000, 100_000] {
            for shape in 0..4 {
                let logits = shaped_logits(&mut rng, len, shape);
                let mut items: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
                // Values whose bit patterns differ only in the highest digit, and infinities.
                if len > 8 {
                    items[1].1 = f32::INFINITY;
                    items[2].1 = f32::NEG_INFINITY;
                    items[3].1 = -f32::MAX;
                    items[4].1 = f32::MIN_POSITIVE;
                    items[5].1 = -f32::MIN_POSITIVE;
                }
                let mut expected = items.clone();
                expected.sort_by(by_logit_desc);
                sort_by_logit_desc(&mut items, &mut Vec::new());
                let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| (i, l.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&items), bits(&expected), "len {len} shape {shape}");
            }
        }
    }

    #[test]
    fn significance_is_the_weight_test_around_the_boundary() {
        // Every f32 logit step across the boundary's neighbourhood at a few temperatures
        // (the top logit at 0 and elsewhere), where the shortcut hands over to the weight.
        for (top, temperature) in [(0.0f32, 1.0f32), (0.0, 0.7), (25.0, 1.0), (-3.5, 2.0), (10.0, 0.05)] {
            let candidates = [(0u32, top)];
            let is_significant = significance_fn(&candidates, temperature);
            let (from, to) = (top - 38.0 * temperature, top - 35.5 * temperature);
            let mut logit = from;
            let mut checked = 0;
            while logit < to {
                let expected = weight(logit, top, 1.0 / temperature) >= NEGLIGIBLE_WEIGHT;
                assert_eq!(is_significant(logit), expected, "logit {logit} top {top} T {temperature}");
                logit = f32::from_bits(if logit < 0.0 { logit.to_bits() - 1 } else { logit.to_bits() + 1 });
                checked += 1;
            }
            assert!(checked > 1000, "{checked}");
        }
    }
}
