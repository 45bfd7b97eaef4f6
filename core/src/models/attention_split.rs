//! Long-context attention cut into fixed slices of positions (flash-decoding), so one decode
//! row's context can be spread over several threads.
//!
//! **The arithmetic** (part of the contract in [`crate::models::attention`]): a query row's
//! attended positions are cut at multiples of [`SLICE`] in absolute position. Each slice is
//! attended from a fresh state (running maximum -inf, lane sums 0, accumulator 0) exactly as the
//! tile contract says, giving a partial `(m_s, l_s, acc_s)` with `l_s` the lane tree of its lane
//! sums. The partials are folded in increasing slice order by [`fold`]; the first one is taken
//! as it is, so a context within one slice gives the same bits as an unsliced pass.
//!
//! **Why the slices are fixed:** the cut points depend only on the row's position and span,
//! never on the thread count or on the rest of the batch, and the fold order is fixed, so
//! computing the slices in one task (sequentially) or in separate tasks (in parallel, then
//! merged) gives the same bits. Whether a step spreads slices over tasks ([`spread_slices`]) is
//! then a pure scheduling choice that may look at the batch and the pool.

/// Positions per slice: a multiple of the tile (32 tiles of 16). Long enough that a slice's
/// work (its K and V rows for every query head of the group) dwarfs its fold and task
/// hand-out; short enough that a 2k context already gives 4 slices to spread.
pub(crate) const SLICE: usize = 512;

/// The fixed slices that cover positions `from..to` (half-open), in order, each clipped to the
/// range.
pub(crate) fn slices(from: usize, to: usize) -> impl Iterator<Item = (usize, usize)> {
    let first = from / SLICE * SLICE;
    let first = if from < to { first } else { to };
    (first..to).step_by(SLICE).map(move |start| (start.max(from), (start + SLICE).min(to)))
}

/// Whether this step should give each long decode row one task per slice: when the step's
/// tasks without splitting are too few to keep every thread busy. With `n` equal tasks on `t`
/// threads the last round leaves threads idle; four tasks per thread keep at least 80% of the
/// pool working, so below that the slices are spread. (The result does not depend on this
/// choice, only the speed.)
pub(crate) fn spread_slices(unsplit_tasks: usize, threads: usize) -> bool {
    threads > 1 && unsplit_tasks < 4 * threads
}

/// One query row's running result over the slices folded so far.
pub(crate) struct Merged<'a> {
    pub max: &'a mut f32,
    pub sum: &'a mut f32,
    pub acc: &'a mut [f32],
}

/// Folds one slice's partial (`max`, lane-tree `sum`, `acc`) into `merged`. The row's first
/// slice is copied; later ones are rescaled to the larger maximum. Plain multiplies and adds
/// (no fused multiply-add) with the scalar `e^x` of every kernel, so every ISA and every
/// schedule folds to the same bits.
pub(crate) fn fold(merged: Merged<'_>, first: bool, max: f32, sum: f32, acc: &[f32]) {
    if first {
        *merged.max = max;
        *merged.sum = sum;
        merged.acc.copy_from_slice(acc);
        return;
    }
    let new_max = if max > *merged.max { max } else { *merged.max };
    let old_scale = crate::models::elementwise::exp_nonpositive(*merged.max - new_max);
    let new_scale = crate::models::elementwise::exp_nonpositive(max - new_max);
    *merged.max = new_max;
    *merged.sum = *merged.sum * old_scale + sum * new_scale;
    for (m, &a) in merged.acc.iter_mut().zip(acc) {
        *m = *m * old_scale + a * new_scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_cut_at_absolute_multiples() {
        assert_eq!(slices(0, 1).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(slices(0, SLICE).collect::<Vec<_>>(), [(0, SLICE)]);
        assert_eq!(slices(0, SLICE + 1).collect::<Vec<_>>(), [(0, SLICE), (SLICE, SLICE + 1)]);
        assert_eq!(
            slices(SLICE - 3, 2 * SLICE + 5).collect::<Vec<_>>(),
            [(SLICE - 3, SLICE), (SLICE, 2 * SLICE), (2 * SLICE, 2 * SLICE + 5)]
        );
        assert_eq!(slices(5, 5).count(), 0);
    }

    #[test]
    fn spreading_needs_idle_threads() {
        assert!(!spread_slices(1, 1));
        assert!(spread_slices(3, 2));
        assert!(!spread_slices(8, 2));
    }

    /// Folding two halves of a softmax gives the softmax of the whole (to rounding).
    #[test]
    fn folding_rescales_to_the_larger_maximum() {
        // Slice A: scores [0, 1] → max 1, sum e^-1 + 1; slice B: score [3] → max 3, sum 1.
        let (a_max, a_sum, a_acc) = (1.0f32, (-1.0f32).exp() + 1.0, [(-1.0f32).exp() * 2.0 + 4.0]);
        let (b_max, b_sum, b_acc) = (3.0f32, 1.0f32, [10.0f32]);
        let (mut max, mut sum, mut acc) = (0.0, 0.0, [0.0]);
        fold(Merged { max: &mut max, sum: &mut sum, acc: &mut acc }, true, a_max, a_sum, &a_acc);
        fold(Merged { max: &mut max, sum: &mut sum, acc: &mut acc }, false, b_max, b_sum, &b_acc);
        let e = |x: f64| x.exp();
        let want = (2.0 * e(-3.0) + 4.0 * e(-2.0) + 10.0) / (e(-3.0) + e(-2.0) + 1.0);
        assert_eq!(max, 3.0);
        assert!(((acc[0] / sum) as f64 - want).abs() < 1e-5, "{} vs {want}", acc[0] / sum);
    }
}
