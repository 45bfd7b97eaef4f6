//! The weight layout the kernels read: ggml blocks regrouped at load so that eight weight rows
//! sit side by side ("row-interleaved", as llama.cpp's repacked CPU formats do).
//!
//! A matrix is cut into groups of [`LANES`] consecutive rows (the last one padded with zero
//! rows). For each group, block `b` of all eight rows is stored together:
//!
//! ```text
//! Q4_0  d[8]: f16                      nibbles[128]      144 bytes (18 per row, as in ggml)
//! Q4_1  d[8]: f16   m[8]: f16          nibbles[128]      160 bytes (20 per row)
//! Q8_0  d[8]: f16                      values[8][32]     272 bytes (34 per row)
//! ```
//!
//! The quantized values are ordered so that one 32-byte vector holds four consecutive weights of
//! each of the eight rows: row `j` in bytes `4j..4j+4`. A SIMD kernel multiplies such a vector
//! by four activation bytes broadcast to every lane and so computes eight rows' partial dot
//! products at once, each in its own 32-bit lane: no horizontal sums, and the eight results are
//! one contiguous store. For the Q4 formats vector `v` (weights `4v..4v+4`) sits in the low
//! nibbles of packed vector `v / 2` when `v` is even and in its high nibbles when `v` is odd.
//! Scales are kept as f16, eight to a 16-byte load, so the layout is no larger than the file's.

use super::blocks::{f16_to_f32, DecodedBlock, QuantFormat, BLOCK};

/// Weight rows per group: one per 32-bit lane of a 256-bit vector.
pub const LANES: usize = 8;

/// Weights of one row that one 32-bit lane holds (the width of `maddubs` + `madd`).
pub(super) const PER_LANE: usize = 4;

/// Bytes of one 32-byte vector of quantized values.
pub(super) const VECTOR: usize = LANES * PER_LANE;

/// Offset of row `lane`'s f16 scale `d` within a group block.
#[inline]
pub const fn d_at(lane: usize) -> usize {
    2 * lane
}

/// Offset of row `lane`'s f16 offset `m` within a Q4_1 group block (after the eight `d`).
#[inline]
pub const fn m_at(lane: usize) -> usize {
    2 * LANES + 2 * lane
}

impl QuantFormat {
    /// Bytes of one block of a whole group (eight rows).
    #[inline]
    pub const fn group_block_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => self.block_bytes() * LANES,
            _ => self.regrouped_group_block_bytes(),
        }
    }

    /// Offset of the quantized values within a group block (after the f16 scales).
    #[inline]
    pub const fn values_offset(self) -> usize {
        match self {
            Self::Q4_1 => 4 * LANES,
            Self::Q4_0 | Self::Q8_0 => 2 * LANES,
            _ => self.regrouped_values_offset(),
        }
    }
}

/// Regroups `rows` rows of ggml blocks (`n_blocks` per row, row after row) into the layout
/// above. `ggml.len()` must be `rows * n_blocks * format.block_bytes()`.
pub fn interleave(format: QuantFormat, rows: usize, n_blocks: usize, ggml: &[u8]) -> crate::memory::StreamingBuffer {
    let block_bytes = format.block_bytes();
    assert_eq!(ggml.len(), rows * n_blocks * block_bytes, "ggml data size");
    let groups = rows.div_ceil(LANES);
    let group_block = format.group_block_bytes();
    // Padding rows stay all zero: scale 0 makes their outputs 0, and they are never stored.
    let mut out = crate::memory::zeroed_for_streaming(groups * n_blocks * group_block);
    for row in 0..rows {
        let (group, lane) = (row / LANES, row % LANES);
        for b in 0..n_blocks {
            let src = &ggml[(row * n_blocks + b) * block_bytes..][..block_bytes];
            let dst = &mut out[(group * n_blocks + b) * group_block..][..group_block];
            scatter_block(format, src, lane, dst);
        }
    }
    out
}

/// Writes one ggml block of row `lane` into its group block.
fn scatter_block(format: QuantFormat, src: &[u8], lane: usize, dst: &mut [u8]) {
    dst[d_at(lane)..][..2].copy_from_slice(&src[..2]);
    if format == QuantFormat::Q4_1 {
        dst[m_at(lane)..][..2].copy_from_slice(&src[2..4]);
    }
    let values = &mut dst[format.values_offset()..];
    match format {
        // Weights 4v..4v+4 of the row are bytes 4v..4v+4 of the block.
        QuantFormat::Q8_0 => {
            for (vector, four) in src[2..].chunks_exact(PER_LANE).enumerate() {
                values[vector * VECTOR + lane * PER_LANE..][..PER_LANE].copy_from_slice(four);
            }
        }
        // ggml byte j holds weight j (low nibble) and weight j + 16 (high nibble). Packed
        // vector p needs weights 8p + t (low) and 8p + 4 + t (high) for t < 4.
        _ => {
            let nibbles = &src[format.block_bytes() - BLOCK / 2..];
            let weight = |k: usize| if k < BLOCK / 2 { nibbles[k] & 0x0f } else { nibbles[k - BLOCK / 2] >> 4 };
            for packed in 0..BLOCK / (2 * PER_LANE) {
                for t in 0..PER_LANE {
                    let low = weight(2 * PER_LANE * packed + t);
                    let high = weight(2 * PER_LANE * packed + PER_LANE + t);
                    values[packed * VECTOR + lane * PER_LANE + t] = low | high << 4;
                }
            }
        }
    }
}

/// Block `b` of row `lane` of a group block, decoded (for the scalar kernel and embeddings).
#[inline]
pub fn decode(format: QuantFormat, group_block: &[u8], lane: usize) -> DecodedBlock {
    let f16_at = |at: usize| f16_to_f32(u16::from_le_bytes([group_block[at], group_block[at + 1]]));
    let d = f16_at(d_at(lane));
    let m = match format {
        QuantFormat::Q4_0 => -8.0 * d,
        QuantFormat::Q4_1 => f16_at(m_at(lane)),
        QuantFormat::Q8_0 => 0.0,
        _ => unreachable!("{format:?} decodes through `regroup`"),
    };
    let values = &group_block[format.values_offset()..];
    let mut q = [0i8; BLOCK];
    for (i, value) in q.iter_mut().enumerate() {
        let (vector, byte) = (i / PER_LANE, lane * PER_LANE + i % PER_LANE);
        *value = match format {
            QuantFormat::Q8_0 => values[vector * VECTOR + byte] as i8,
            _ => ((values[vector / 2 * VECTOR + byte] >> (4 * (vector % 2))) & 0x0f) as i8,
        };
    }
    DecodedBlock { d, m, q }
}

/// The ggml bytes of row `row` (the inverse of [`interleave`] for one row).
pub fn ggml_row(format: QuantFormat, interleaved: &[u8], n_blocks: usize, row: usize) -> Vec<u8> {
    let group_block = format.group_block_bytes();
    let (group, lane) = (row / LANES, row % LANES);
    let mut out = Vec::with_capacity(n_blocks * format.block_bytes());
    for b in 0..n_blocks {
        let block = &interleaved[(group * n_blocks + b) * group_block..][..group_block];
        out.extend_from_slice(&block[d_at(lane)..][..2]);
        if format == QuantFormat::Q4_1 {
            out.extend_from_slice(&block[m_at(lane)..][..2]);
        }
        let q = decode(format, block, lane).q;
        match format {
            QuantFormat::Q8_0 => out.extend(q.iter().map(|&v| v as u8)),
            _ => out.extend((0..BLOCK / 2).map(|j| q[j] as u8 | (q[j + BLOCK / 2] as u8) << 4)),
        }
    }
    out
}
