//! The block formats people download beside Q4_0/Q4_1/Q8_0 (K-quants, Q5_0/Q5_1, IQ4_NL/IQ4_XS),
//! regrouped at load into the eight-row layout of [`super::interleaved`].
//!
//! Every one of them dequantizes, in ggml's own code, to `scale * q + min` over sub-blocks of 32
//! or 16 weights, with the scale and min computed in f32 from a few stored numbers. So at load
//! each 32-weight block of a row becomes a [`RowBlock`]: its small integers `q` plus the stored
//! numbers the scale and min come from (f16 bits and small integer sub-scales, not f32, to keep
//! the weights close to the file's bits per weight; decode is bandwidth-bound). The kernels and
//! [`dequantize_block`] compute the scale and min from them exactly as ggml does (products of
//! an f16 and a small integer are exact in f32), so our dequantized rows equal ggml's bit for bit.
//!
//! Group block of eight rows (row `j`'s fields at `j` bytes (f16: `2 * j`) into each array):
//!
//! ```text
//! [d[8]: f16   aux[8]: f16 (dmin or m)]   sc[n_sc][8]: u8/i8   mins[n_mins][8]: u8   values
//! ```
//!
//! The K-quants and IQ4_XS share `d` and `aux` over a 256-weight super-block: those are stored
//! once per super-block, in headers after the group's blocks (so every block has the same size
//! and the kernels' block loop stays simple). Bits per weight in memory (file): Q4_K 4.625
//! (4.5), Q5_K 5.625 (5.5), Q6_K 6.5625 (6.5625), Q3_K 3.5625 (3.4375), Q2_K 3.125 (2.625),
//! IQ4_XS 4.3125 (4.25), IQ4_NL 4.5, Q5_0 5.5, Q5_1 6 (as in the file).
//!
//! Values: the Q4 nibble packing of `interleaved`; 5-bit formats add a bit vector whose byte
//! `k` holds bit 4 of byte `k` of all eight value vectors, Q6_K two "crumb" vectors whose byte
//! `k` holds bits 4-5 of byte `k` of four value vectors (a shift and a mask per value vector,
//! like ggml's own Q5_K / Q6_K `qh`). Q2_K keeps only crumb vectors (2 bits), Q3_K crumbs and a
//! bit vector (3 bits). Signed values are stored plus a bias (Q6_K 32, Q3_K 4, Q5_0 16: its
//! weights are `d (q - 16)`) and the kernels subtract it, in integers: a block's dot starts at
//! `-bias Σ a`, exact (llama.cpp's own formulation of Q5_0).
//!
//! How the integer dot products of a 32-weight block turn into a row's sum ([`Epilogue`]), with
//! `lo`/`hi` the dots of the block's two 16-weight halves and `d_a`, `s_a = d_a Σ a` the
//! activation block's scale and scaled sum:
//! - `Offset` (Q4_K, Q5_K, Q5_1): `acc += fma(d_w d_a, lo + hi, m_w s_a)`;
//! - `Plain` (IQ4_NL, IQ4_XS, Q6_K, Q3_K, Q5_0): `acc = fma(d_w d_a, sc_lo lo + sc_hi hi, acc)`
//!   (Q5_0 has no sub-scales: `lo + hi`). One float multiply per block less than `Offset`,
//!   which is what bounds the 512-bit kernels (`vnni512`).
//! - `HalfMins` (Q2_K): `acc += fma(d_w d_a, sc_lo lo + sc_hi hi, m_w (d_a (mn_lo Σa_lo + mn_hi Σa_hi)))`.
//!
//! The integer sums are exact on every path: a half's dot is at most 16 · 32 · 127 in magnitude
//! and a sub-scale at most 128, so `sc_lo lo + sc_hi hi` stays below 2^24 and even its
//! conversion to f32 is exact. AMX unpacks only Q4_0/Q4_1/Q8_0; batches of these formats run
//! on the VNNI kernels, with the same bits.

use super::blocks::{f16_to_f32, QuantFormat, BLOCK};
use super::interleaved::{LANES, PER_LANE, VECTOR};

/// 32-weight blocks per K-quant super-block.
pub const SUPER_BLOCK: usize = 8;

/// The IQ4_NL / IQ4_XS codebook (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// One 32-weight block of one row, as stored (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowBlock {
    /// f16 bits of the scale (the super-block scale for K-quants).
    pub d: u16,
    /// f16 bits of the K-quants' `dmin` or Q5_1's `m`.
    pub aux: u16,
    /// Integer sub-scales: one per block (Q4_K, Q5_K, IQ4_XS) or per 16-weight half.
    pub sc: [u8; 2],
    /// Integer sub-mins, like `sc` (Q4_K, Q5_K: one; Q2_K: two).
    pub mins: [u8; 2],
    /// The quantized values: unsigned codes, or (Q6_K, Q3_K) signed bytes.
    pub q: [u8; BLOCK],
}

/// How a block's values are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    Nibbles,
    NibblesAndHighBit,
    /// Q6_K: nibbles plus bits 4 and 5 of four vectors in each byte of two crumb vectors.
    NibblesAndTwoHighBits,
    /// Q2_K: two crumb vectors only (2-bit values).
    Crumbs,
    /// Q3_K: crumbs (bits 0-1) and a bit vector (bit 2).
    CrumbsAndBit,
    Bytes,
}

/// How a block's integer dots become a float sum (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    Offset,
    Plain,
    HalfMins,
}

impl QuantFormat {
    /// The formats regrouped here (the others go through `interleaved` directly).
    #[inline]
    pub const fn is_regrouped(self) -> bool {
        !matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q8_0)
    }

    #[inline]
    pub const fn values(self) -> Values {
        match self {
            Self::Q5_0 | Self::Q5_1 | Self::Q5K => Values::NibblesAndHighBit,
            Self::Q6K => Values::NibblesAndTwoHighBits,
            Self::Q2K => Values::Crumbs,
            Self::Q3K => Values::CrumbsAndBit,
            Self::Q8_0 => Values::Bytes,
            _ => Values::Nibbles,
        }
    }

    #[inline]
    pub const fn epilogue(self) -> Epilogue {
        match self {
            Self::Q2K => Epilogue::HalfMins,
            Self::IQ4NL | Self::IQ4XS | Self::Q6K | Self::Q3K | Self::Q5_0 | Self::Q8_0 => Epilogue::Plain,
            _ => Epilogue::Offset,
        }
    }

    /// What is added to a signed value to store it unsigned (Q6_K: -32..31, Q3_K: -4..3,
    /// Q5_0: -16..15).
    #[inline]
    pub const fn bias(self) -> u8 {
        match self {
            Self::Q6K => 32,
            Self::Q5_0 => 16,
            Self::Q3K => 4,
            _ => 0,
        }
    }

    #[inline]
    const fn has_aux(self) -> bool {
        matches!(self, Self::Q4K | Self::Q5K | Self::Q5_1 | Self::Q2K)
    }

    #[inline]
    const fn scale_count(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::IQ4XS => 1,
            Self::Q6K | Self::Q3K | Self::Q2K => 2,
            _ => 0,
        }
    }

    #[inline]
    const fn min_count(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K => 1,
            Self::Q2K => 2,
            _ => 0,
        }
    }

    /// Offset of the eight rows' f16 `aux` values from their `d` values.
    pub const AUX_AT: usize = 2 * LANES;

    /// Whether `d` (and `aux`) belong to a 256-weight super-block (the K-quants, IQ4_XS): then
    /// they are stored once per super-block, in a header after a group's blocks, not per block.
    #[inline]
    pub const fn has_super_header(self) -> bool {
        matches!(self, Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K | Self::IQ4XS)
    }

    /// Bytes of the eight rows' f16 `d` (and `aux`) values.
    #[inline]
    const fn scale_fields_bytes(self) -> usize {
        2 * LANES * (1 + self.has_aux() as usize)
    }

    /// Bytes of a group (eight rows) of `n_blocks` blocks, super-block headers included.
    #[inline]
    pub const fn group_bytes(self, n_blocks: usize) -> usize {
        let headers = if self.has_super_header() { n_blocks / SUPER_BLOCK * self.scale_fields_bytes() } else { 0 };
        n_blocks * self.group_block_bytes() + headers
    }

    /// Offset within a group of block `b`'s eight f16 `d` values (`aux` follows at
    /// [`Self::AUX_AT`]): in the block, or in its super-block's header.
    #[inline]
    pub const fn scale_fields_at(self, n_blocks: usize, b: usize) -> usize {
        if self.has_super_header() {
            n_blocks * self.group_block_bytes() + b / SUPER_BLOCK * self.scale_fields_bytes()
        } else {
            b * self.group_block_bytes()
        }
    }

    /// Offset within a group block of the eight rows' sub-scale `k` (k < 2).
    #[inline]
    pub const fn sc_at(self, k: usize) -> usize {
        let in_block = if self.has_super_header() { 0 } else { self.scale_fields_bytes() };
        in_block + LANES * k
    }

    /// Offset of the eight rows' sub-min `k`.
    #[inline]
    pub const fn mins_at(self, k: usize) -> usize {
        self.sc_at(self.scale_count()) + LANES * k
    }

    /// Offset of the values of a regrouped format's group block.
    #[inline]
    pub const fn regrouped_values_offset(self) -> usize {
        self.mins_at(self.min_count())
    }

    /// Bytes of a regrouped format's group block.
    #[inline]
    pub const fn regrouped_group_block_bytes(self) -> usize {
        self.regrouped_values_offset()
            + match self.values() {
                Values::Nibbles => BLOCK * LANES / 2,
                Values::NibblesAndHighBit => BLOCK * LANES / 2 + BLOCK * LANES / 8,
                Values::NibblesAndTwoHighBits => BLOCK * LANES / 2 + 2 * BLOCK * LANES / 8,
                Values::Bytes => BLOCK * LANES,
                Values::Crumbs => BLOCK * LANES / 4,
                Values::CrumbsAndBit => BLOCK * LANES / 4 + BLOCK * LANES / 8,
            }
    }

    /// ggml (values per block, bytes per block) of a regrouped format.
    pub const fn ggml_block(self) -> (usize, usize) {
        match self {
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::IQ4NL => (32, 18),
            Self::IQ4XS => (256, 136),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The 32-weight blocks of one ggml block (`bytes.len() == format.ggml_block().1`).
pub fn decode_ggml_block(format: QuantFormat, bytes: &[u8], out: &mut Vec<RowBlock>) {
    match format {
        QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
            let aux = if format == QuantFormat::Q5_1 { u16_at(bytes, 2) } else { 0 };
            let at = if format == QuantFormat::Q5_1 { 4 } else { 2 };
            let qh = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            let qs = &bytes[at + 4..at + 20];
            // Q5_0's values are signed, `q - 16` (stored plus `bias`); Q5_1's stay unsigned.
            let bias = format.bias();
            let q = std::array::from_fn(|i| {
                let nibble = if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 };
                (nibble | (((qh >> i) & 1) as u8) << 4).wrapping_sub(bias)
            });
            out.push(RowBlock { d: u16_at(bytes, 0), aux, sc: [0; 2], mins: [0; 2], q });
        }
        QuantFormat::IQ4NL => {
            out.push(RowBlock { d: u16_at(bytes, 0), q: nibbles_low_then_high(&bytes[2..18]), ..Default::default() })
        }
        QuantFormat::IQ4XS => {
            let (d, scales_h, scales_l) = (u16_at(bytes, 0), u16_at(bytes, 2), &bytes[4..8]);
            for ib in 0..8 {
                let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 15) | ((((scales_h >> (2 * ib)) & 3) as u8) << 4);
                let sc = (ls as i8 - 32) as u8;
                let q = nibbles_low_then_high(&bytes[8 + 16 * ib..][..16]);
                out.push(RowBlock { d, sc: [sc; 2], q, ..Default::default() });
            }
        }
        QuantFormat::Q4K | QuantFormat::Q5K => {
            let (d, dmin, scales) = (u16_at(bytes, 0), u16_at(bytes, 2), &bytes[4..16]);
            let (qh, qs) =
                if format == QuantFormat::Q5K { (&bytes[16..48], &bytes[48..176]) } else { (&[][..], &bytes[16..144]) };
            for j in 0..8 {
                let (sc, m) = k4_scale_min(j, scales);
                let chunk = &qs[32 * (j / 2)..][..32];
                let q = std::array::from_fn(|l| {
                    let nibble = if j % 2 == 0 { chunk[l] & 15 } else { chunk[l] >> 4 };
                    let high = if qh.is_empty() { 0 } else { (qh[l] >> j) & 1 };
                    nibble | high << 4
                });
                out.push(RowBlock { d, aux: dmin, sc: [sc; 2], mins: [m; 2], q });
            }
        }
        QuantFormat::Q6K => {
            let (ql, qh, scales, d) = (&bytes[..128], &bytes[128..192], &bytes[192..208], u16_at(bytes, 208));
            for b in 0..8 {
                let q = std::array::from_fn(|i| {
                    let e = 32 * b + i;
                    let (n, k, l) = (e / 128, e % 128 / 32, e % 32);
                    let low = ql[64 * n + l + 32 * (k & 1)];
                    let nibble = if k < 2 { low & 15 } else { low >> 4 };
                    let high = (qh[32 * n + l] >> (2 * k)) & 3;
                    ((nibble | high << 4) as i8 - 32) as u8
                });
                out.push(RowBlock { d, sc: [scales[2 * b], scales[2 * b + 1]], q, ..Default::default() });
            }
        }
        QuantFormat::Q2K => {
            let (scales, qs, d, dmin) = (&bytes[..16], &bytes[16..80], u16_at(bytes, 80), u16_at(bytes, 82));
            for b in 0..8 {
                let q = std::array::from_fn(|i| {
                    let e = 32 * b + i;
                    let (n, j, l) = (e / 128, e % 128 / 32, e % 32);
                    (qs[32 * n + l] >> (2 * j)) & 3
                });
                let (s0, s1) = (scales[2 * b], scales[2 * b + 1]);
                out.push(RowBlock { d, aux: dmin, sc: [s0 & 15, s1 & 15], mins: [s0 >> 4, s1 >> 4], q });
            }
        }
        QuantFormat::Q3K => {
            let (hmask, qs, raw, d) = (&bytes[..32], &bytes[32..96], &bytes[96..108], u16_at(bytes, 108));
            let scale = |k: usize| {
                let low = if k < 8 { raw[k] & 15 } else { raw[k - 8] >> 4 };
                let high = (raw[8 + k % 4] >> (2 * (k / 4))) & 3;
                ((low | high << 4) as i8 - 32) as u8
            };
            for b in 0..8 {
                let q = std::array::from_fn(|i| {
                    let e = 32 * b + i;
                    let (n, j, l) = (e / 128, e % 128 / 32, e % 32);
                    let low = ((qs[32 * n + l] >> (2 * j)) & 3) as i8;
                    let high = (hmask[l] >> (4 * n + j)) & 1;
                    (low - if high == 0 { 4 } else { 0 }) as u8
                });
                out.push(RowBlock { d, sc: [scale(2 * b), scale(2 * b + 1)], q, ..Default::default() });
            }
        }
        QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => unreachable!("{format:?} is not regrouped"),
    }
}

/// ggml's Q4_0-style nibble order: byte `j` holds weight `j` (low) and `j + 16` (high).
fn nibbles_low_then_high(qs: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|i| if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 })
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Regroups `rows` rows of ggml data (`n_blocks` 32-weight blocks per row) into the layout
/// above; `ggml.len()` must hold exactly those rows.
pub fn interleave(format: QuantFormat, rows: usize, n_blocks: usize, ggml: &[u8]) -> crate::memory::StreamingBuffer {
    let (per_block, block_bytes) = format.ggml_block();
    let row_bytes = n_blocks * BLOCK / per_block * block_bytes;
    assert_eq!(ggml.len(), rows * row_bytes, "ggml data size");
    let group_bytes = format.group_bytes(n_blocks);
    // Padding rows stay all zero: scale 0 makes their outputs 0, and they are never stored.
    let mut out = crate::memory::zeroed_for_streaming(rows.div_ceil(LANES) * group_bytes);
    let mut blocks = Vec::with_capacity(n_blocks);
    for (row, bytes) in ggml.chunks_exact(row_bytes.max(1)).enumerate().take(rows) {
        blocks.clear();
        bytes.chunks_exact(block_bytes).for_each(|b| decode_ggml_block(format, b, &mut blocks));
        let group = &mut out[row / LANES * group_bytes..][..group_bytes];
        for (b, block) in blocks.iter().enumerate() {
            scatter(format, block, group, n_blocks, b, row % LANES);
        }
    }
    out
}

/// Writes one row's block `b` into lane `lane` of a group of `n_blocks` blocks.
pub fn scatter(format: QuantFormat, block: &RowBlock, group: &mut [u8], n_blocks: usize, b: usize, lane: usize) {
    let fields = format.scale_fields_at(n_blocks, b);
    group[fields + 2 * lane..][..2].copy_from_slice(&block.d.to_le_bytes());
    if format.has_aux() {
        group[fields + QuantFormat::AUX_AT + 2 * lane..][..2].copy_from_slice(&block.aux.to_le_bytes());
    }
    let dst = &mut group[b * format.group_block_bytes()..][..format.group_block_bytes()];
    (0..format.scale_count()).for_each(|k| dst[format.sc_at(k) + lane] = block.sc[k]);
    (0..format.min_count()).for_each(|k| dst[format.mins_at(k) + lane] = block.mins[k]);
    let values = &mut dst[format.regrouped_values_offset()..];
    match format.values() {
        Values::Bytes => {
            for (vector, four) in block.q.chunks_exact(PER_LANE).enumerate() {
                values[vector * VECTOR + lane * PER_LANE..][..PER_LANE].copy_from_slice(four);
            }
        }
        Values::Crumbs | Values::CrumbsAndBit => {
            let q = block.q.map(|q| q.wrapping_add(format.bias()));
            // Crumb vector g, byte k: bits 0-1 of byte k of vector 4g + j in its bits 2j, 2j + 1;
            // then (Q3_K) the bit vector: bit 2 of byte k of vector v in bit v of byte k.
            for vector in 0..BLOCK / PER_LANE {
                let (g, j) = (vector / 4, vector % 4);
                for t in 0..PER_LANE {
                    let (value, byte) = (q[vector * PER_LANE + t], lane * PER_LANE + t);
                    let crumb = &mut values[g * VECTOR + byte];
                    *crumb = (*crumb & !(3 << (2 * j))) | (value & 3) << (2 * j);
                    if format.values() == Values::CrumbsAndBit {
                        let bits = &mut values[BLOCK * LANES / 4 + byte];
                        *bits = (*bits & !(1 << vector)) | ((value >> 2) & 1) << vector;
                    }
                }
            }
        }
        Values::Nibbles | Values::NibblesAndHighBit | Values::NibblesAndTwoHighBits => {
            let q = block.q.map(|q| q.wrapping_add(format.bias()));
            // Packed vector p: weights 8p + t in the low nibbles, 8p + 4 + t in the high ones.
            for packed in 0..BLOCK / (2 * PER_LANE) {
                for t in 0..PER_LANE {
                    let low = q[2 * PER_LANE * packed + t] & 15;
                    let high = q[2 * PER_LANE * packed + PER_LANE + t] & 15;
                    values[packed * VECTOR + lane * PER_LANE + t] = low | high << 4;
                }
            }
            // Bit vector, byte k: bit 4 of byte k of value vector v in its bit v.
            if format.values() == Values::NibblesAndHighBit {
                let bits = &mut values[BLOCK * LANES / 2..];
                for vector in 0..BLOCK / PER_LANE {
                    for t in 0..PER_LANE {
                        let high = (q[vector * PER_LANE + t] >> 4) & 1;
                        let byte = &mut bits[lane * PER_LANE + t];
                        *byte = (*byte & !(1 << vector)) | high << vector;
                    }
                }
            }
            // Crumb vector g, byte k: bits 4-5 of byte k of vector 4g + j in its bits 2j, 2j + 1.
            if format.values() == Values::NibblesAndTwoHighBits {
                let crumbs = &mut values[BLOCK * LANES / 2..];
                for vector in 0..BLOCK / PER_LANE {
                    let (g, j) = (vector / 4, vector % 4);
                    for t in 0..PER_LANE {
                        let high = (q[vector * PER_LANE + t] >> 4) & 3;
                        let byte = &mut crumbs[g * VECTOR + lane * PER_LANE + t];
                        *byte = (*byte & !(3 << (2 * j))) | high << (2 * j);
                    }
                }
            }
        }
    }
}

/// Lane `lane` of block `b` of a group of `n_blocks` blocks (the inverse of [`scatter`]).
pub fn extract(format: QuantFormat, group: &[u8], n_blocks: usize, b: usize, lane: usize) -> RowBlock {
    let fields = format.scale_fields_at(n_blocks, b);
    let mut block = RowBlock { d: u16_at(group, fields + 2 * lane), ..Default::default() };
    if format.has_aux() {
        block.aux = u16_at(group, fields + QuantFormat::AUX_AT + 2 * lane);
    }
    let src = &group[b * format.group_block_bytes()..][..format.group_block_bytes()];
    (0..format.scale_count()).for_each(|k| block.sc[k] = src[format.sc_at(k) + lane]);
    (0..format.min_count()).for_each(|k| block.mins[k] = src[format.mins_at(k) + lane]);
    let values = &src[format.regrouped_values_offset()..];
    for (i, q) in block.q.iter_mut().enumerate() {
        let (vector, byte) = (i / PER_LANE, lane * PER_LANE + i % PER_LANE);
        *q = match format.values() {
            Values::Bytes => values[vector * VECTOR + byte],
            Values::Crumbs => (values[vector / 4 * VECTOR + byte] >> (2 * (vector % 4))) & 3,
            Values::CrumbsAndBit => {
                let low = (values[vector / 4 * VECTOR + byte] >> (2 * (vector % 4))) & 3;
                low | ((values[BLOCK * LANES / 4 + byte] >> vector) & 1) << 2
            }
            _ => (values[vector / 2 * VECTOR + byte] >> (4 * (vector % 2))) & 15,
        };
        if format.values() == Values::NibblesAndHighBit {
            *q |= ((values[BLOCK * LANES / 2 + byte] >> vector) & 1) << 4;
        }
        if format.values() == Values::NibblesAndTwoHighBits {
            let crumb = values[BLOCK * LANES / 2 + vector / 4 * VECTOR + byte];
            *q |= ((crumb >> (2 * (vector % 4))) & 3) << 4;
        }
        *q = q.wrapping_sub(format.bias());
    }
    block
}

/// A block as the kernels see it: weight `i` of half `h` is `(d sc[h]) q[i] + m mins[h]`
/// (module docs); `sc` and `mins` are 1 where a format has none per half.
#[derive(Debug, Clone, Copy)]
pub struct Decoded {
    pub d: f32,
    pub m: f32,
    pub sc: [i32; 2],
    pub mins: [i32; 2],
    pub q: [i8; BLOCK],
}

/// Lane `lane` of block `b` of a group, with its float scale and min computed as the SIMD
/// kernels do.
pub fn decode(format: QuantFormat, group: &[u8], n_blocks: usize, b: usize, lane: usize) -> Decoded {
    let block = extract(format, group, n_blocks, b, lane);
    let (d, aux) = (f16_to_f32(block.d), f16_to_f32(block.aux));
    let raw = block.q.map(|q| q as i8);
    let signed = |v: [u8; 2]| v.map(|s| s as i8 as i32);
    let unsigned = |v: [u8; 2]| v.map(|s| s as i32);
    let mut out = Decoded { d, m: 0.0, sc: [1; 2], mins: [1; 2], q: raw };
    match format {
        // Signed values `q - 16` and the scale alone: the `Plain` epilogue.
        QuantFormat::Q5_0 => {}
        QuantFormat::Q5_1 => out.m = aux,
        QuantFormat::Q4K | QuantFormat::Q5K => {
            out.d = d * block.sc[0] as f32;
            out.m = -aux * block.mins[0] as f32;
        }
        QuantFormat::IQ4NL => out.q = block.q.map(|q| IQ4_VALUES[q as usize & 15]),
        QuantFormat::IQ4XS => {
            out.d = d * block.sc[0] as i8 as f32;
            out.q = block.q.map(|q| IQ4_VALUES[q as usize & 15]);
        }
        QuantFormat::Q6K | QuantFormat::Q3K => out.sc = signed(block.sc),
        QuantFormat::Q2K => {
            out.m = -aux;
            out.sc = unsigned(block.sc);
            out.mins = unsigned(block.mins);
        }
        QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => unreachable!("{format:?} is not regrouped"),
    }
    out
}

/// Lane `lane` of block `b` of a group as f32, in ggml's order of operations (bit for bit
/// what its dequantizer gives).
pub fn dequantize_block(format: QuantFormat, group: &[u8], n_blocks: usize, b: usize, lane: usize, out: &mut [f32]) {
    let w = decode(format, group, n_blocks, b, lane);
    for (i, (v, &q)) in out.iter_mut().zip(&w.q).enumerate() {
        let h = i / (BLOCK / 2);
        *v = match format.epilogue() {
            Epilogue::Offset => w.d * q as f32 + w.m,
            Epilogue::Plain => (w.d * w.sc[h] as f32) * q as f32,
            Epilogue::HalfMins => (w.d * w.sc[h] as f32) * q as f32 + w.m * w.mins[h] as f32,
        };
    }
}

/// The dot products of a block's two 16-weight halves.
pub fn half_dots(w: &[i8; BLOCK], a: &[i8; BLOCK]) -> [i32; 2] {
    let dot = |r: std::ops::Range<usize>| r.map(|i| w[i] as i32 * a[i] as i32).sum();
    [dot(0..16), dot(16..32)]
}
