//! The 256-value super-block quantizers (Q4_K, Q5_K, Q6_K) as ggml's reference
//! `quantize_row_q{4,5,6}_K_ref` computes them without an importance matrix: the scale
//! searches (`make_qkx2_quants` for the affine types, `make_qx_quants` for Q6_K), then the
//! 6-bit (or 8-bit) sub-block scales, then every value re-rounded against the stored scales.
//! Every float operation is written in C's order and association (ggml-base is built without
//! FMA or fast-math), so the result is the same to the bit.

use crate::f16::{f16_to_f32, f32_to_f16};

pub const SUPER_BLOCK: usize = 256;

/// Below this a group counts as all zeros (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 × 2^23 and reading the
/// mantissa (valid for |x| < 2^22; every caller's values are far smaller).
fn nearest_int(x: f32) -> i32 {
    let biased = (x + 12_582_912.0f32).to_bits() as i32;
    (biased & 0x007f_ffff) - 0x0040_0000
}

/// Settings of one affine scale search (`make_qkx2_quants`'s arguments).
struct AffineSearch {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    steps: i32,
}

const Q4K_SEARCH: AffineSearch = AffineSearch { nmax: 15, rmin: -1.0, rdelta: 0.1, steps: 20 };
const Q5K_SEARCH: AffineSearch = AffineSearch { nmax: 31, rmin: -0.5, rdelta: 0.1, steps: 15 };

/// Weighted least squares over a few candidate scales for `x ≈ scale · L + min` with
/// `0 <= L <= nmax` and `min <= 0`. Writes the codes to `codes`; returns `(scale, -min)`.
fn make_qkx2_quants(x: &[f32; 32], weights: &[f32; 32], codes: &mut [u8], search: &AffineSearch) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes[..32].fill(0);
        return (0.0, -min);
    }
    let nmax = search.nmax as f32;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, search.nmax);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for step in 0..=search.steps {
        iscale = (search.rmin + search.rdelta * step as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, search.nmax);
            trial[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                codes[..32].copy_from_slice(&trial);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One sub-block's search weights: `sqrt(mean(x²)) + |x|`.
fn affine_weights(x: &[f32; 32]) -> [f32; 32] {
    let mut sum_x2 = 0.0f32;
    for v in x {
        sum_x2 += v * v;
    }
    let av_x = (sum_x2 / 32.0).sqrt();
    std::array::from_fn(|l| av_x + x[l].abs())
}

/// The part Q4_K and Q5_K share: eight 32-value sub-blocks, each with a 6-bit scale and a
/// 6-bit min packed into 12 bytes, two f16 super-scales, and each value's code (0..=nmax).
struct AffineSuperBlock {
    d: u16,
    dmin: u16,
    scales: [u8; 12],
    codes: [u8; SUPER_BLOCK],
}

fn quantize_affine_super_block(x: &[f32], search: &AffineSearch) -> AffineSuperBlock {
    let mut codes = [0u8; SUPER_BLOCK];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let sub: &[f32; 32] = x[32 * j..32 * j + 32].try_into().expect("32 values");
        let (scale, min) = make_qkx2_quants(sub, &affine_weights(sub), &mut codes[32 * j..], search);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // C stores nearest_int into a uint8_t (mod 256) before capping at 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    // Re-round every value against the scales as stored (a zero scale keeps the search's codes).
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let d = f16_to_f32(d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * m as f32;
        for i in 32 * j..32 * j + 32 {
            codes[i] = nearest_int((x[i] + dm) / d).clamp(0, search.nmax) as u8;
        }
    }
    AffineSuperBlock { d, dmin, scales: packed, codes }
}

/// Sub-block `j`'s 6-bit scale and min from the 12 packed bytes (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K: d, dmin, 12 scale bytes, then 128 bytes of nibbles (per 64 values: the first 32 low,
/// the next 32 high).
pub fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(SUPER_BLOCK) {
        let b = quantize_affine_super_block(block, &Q4K_SEARCH);
        push_affine_head(&b, out);
        for chunk in b.codes.chunks_exact(64) {
            out.extend((0..32).map(|l| chunk[l] | (chunk[l + 32] << 4)));
        }
    }
}

/// Q5_K: d, dmin, 12 scale bytes, 32 bytes of fifth bits (bit pair 2k, 2k + 1 of byte l for
/// values 64k + l and 64k + 32 + l), then the low nibbles laid out as in Q4_K.
pub fn quantize_q5_k(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(SUPER_BLOCK) {
        let b = quantize_affine_super_block(block, &Q5K_SEARCH);
        push_affine_head(&b, out);
        let mut high = [0u8; 32];
        for (k, chunk) in b.codes.chunks_exact(64).enumerate() {
            for l in 0..32 {
                high[l] |= ((chunk[l] >> 4) << (2 * k)) | ((chunk[l + 32] >> 4) << (2 * k + 1));
            }
        }
        out.extend_from_slice(&high);
        for chunk in b.codes.chunks_exact(64) {
            out.extend((0..32).map(|l| (chunk[l] & 0xf) | ((chunk[l + 32] & 0xf) << 4)));
        }
    }
}

fn push_affine_head(b: &AffineSuperBlock, out: &mut Vec<u8>) {
    out.extend_from_slice(&b.d.to_le_bytes());
    out.extend_from_slice(&b.dmin.to_le_bytes());
    out.extend_from_slice(&b.scales);
}

/// `make_qx_quants` with `rmse_type` 1 and no importance weights, for 16 values and
/// `nmax` 32: a symmetric scale searched over 19 candidates, weighted by x². Writes codes
/// `l + 32` (l in -32..=31) to `codes`; returns the scale.
fn make_qx_quants_q6(x: &[f32], codes: &mut [i8]) -> f32 {
    const NMAX: i32 = 32;
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        codes[..16].fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(NMAX as f32) / max;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (code(iscale, v) + NMAX) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        iscale = -(NMAX as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (code(iscale, v) + NMAX) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high bit pairs, sixteen signed 8-bit scales
/// (one per 16 values) and one f16 super-scale, last.
pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks_exact(SUPER_BLOCK) {
        let mut codes = [0i8; SUPER_BLOCK];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let scale = make_qx_quants_q6(&block[16 * ib..16 * ib + 16], &mut codes[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            out.extend_from_slice(&[0u8; 210]);
            continue;
        }
        let iscale = -128.0f32 / max_scale;
        let d = f32_to_f16(1.0 / iscale);
        let block_scales: [i8; 16] = std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
        // Re-round every value against the scales as stored (a zero scale keeps the search's codes).
        for ((&scale, codes), values) in block_scales.iter().zip(codes.chunks_exact_mut(16)).zip(block.chunks_exact(16))
        {
            let d = f16_to_f32(d) * scale as f32;
            if d == 0.0 {
                continue;
            }
            for (code, &v) in codes.iter_mut().zip(values) {
                *code = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
            }
        }
        push_q6_k_codes(&codes, out);
        out.extend(block_scales.iter().map(|&s| s as u8));
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Per 128 values: `ql` byte l holds values l and l + 64 (low nibbles), byte l + 32 values
/// l + 32 and l + 96; `qh` byte l holds the top two bits of values l, l + 32, l + 64, l + 96.
fn push_q6_k_codes(codes: &[i8; SUPER_BLOCK], out: &mut Vec<u8>) {
    let codes = codes.map(|c| c as u8);
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (half, chunk) in codes.chunks_exact(128).enumerate() {
        for l in 0..32 {
            let [q1, q2, q3, q4] = [chunk[l], chunk[l + 32], chunk[l + 64], chunk[l + 96]];
            ql[64 * half + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
            ql[64 * half + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
            qh[32 * half + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
}
