//! Quantized weight matrices and the matrix-multiply kernels over them (our own code, no BLAS).
//!
//! A [`QMatrix`] holds one GGUF weight matrix, its blocks regrouped at load so eight rows sit
//! side by side (`interleaved` for Q4_0/Q4_1/Q8_0; `regroup` for Q5_0, Q5_1, Q2_K..Q6_K,
//! IQ4_NL and IQ4_XS, which all become small integers times a scale plus a min per 32 or 16
//! weights, dequantizing bit for bit like ggml). F32, F16 and BF16 are widened to f32. [`QMatrix::matmul`] quantizes each activation row to 8 bits
//! per 32-element block and takes integer dot products against the weight blocks, eight weight
//! rows per vector: with VNNI or AVX2 on CPUs that have them (chosen at runtime), portable code
//! otherwise; batches of 8 rows or more (16 for Q8_0) go to AMX tiles where the CPU and OS
//! offer them (`amx`). With AVX-512, batches of 8 rows or more in the formats `vnni512` covers take
//! sixteen weight rows (two groups) per 512-bit vector. The SIMD kernels give identical bits (exact integer block sums, then the same
//! float operations in the same order), so the choice never shows in the results.
//!
//! **Batch invariance.** Every output element is computed by the same operations whatever the
//! batch size and wherever its row sits in the batch: activations are quantized row by row,
//! each (weight row, activation row) pair has its own accumulator summed over blocks in order,
//! and tiling only decides which pairs share a weight load, never how a pair is summed. So a
//! sequence gets bit-identical logits alone or batched.

#[cfg(target_arch = "x86_64")]
#[macro_use]
mod group_kernel;

mod activations;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
pub(crate) mod disjoint;
mod interleaved;
#[doc(hidden)]
pub mod quantize;
mod regroup;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod vnni512;

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::memory::prefetch_lines;
use crate::sampling::{LaneArgmax, RunningArgmax};
use crate::threadpool::ThreadPool;

use activations::quantize_row_portable;
pub(crate) use activations::Q8Block;
use blocks::{f16_to_f32, QuantFormat, BLOCK};
use disjoint::DisjointSlice;
use interleaved::LANES;

/// Activation rows one unpacked group of weight blocks is applied to at a time by the AVX2
/// kernel (4 accumulators, 4 partial sums, the unpacked weights and temporaries fit the 16 YMM
/// registers).
const TILE: usize = 4;

/// Quantizes one activation row (`x.len() == out.len() * 32`) block by block, with AVX-512 or
/// AVX2 where the CPU has them, else portably ([`activations::quantize_row_portable`], which
/// states the rule); all give the same bits (same scale, same rounding, exact integer sum).
/// Lives here, above them, so that `activations` and `avx2` do not import each other.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    debug_assert_eq!(x.len(), out.len() * BLOCK);
    #[cfg(target_arch = "x86_64")]
    if activations::avx512::is_available() {
        // SAFETY: AVX-512F is available (checked above).
        return unsafe { activations::avx512::quantize_row(x, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::is_available() {
        // SAFETY: AVX2 is available (checked above).
        return unsafe { avx2::quantize_row(x, out) };
    }
    quantize_row_portable(x, out);
}

/// Values per quantized activation block ([`Q8Block`]): rows pre-quantized for
/// [`QMatrix::matmul_prequantized`] take one block per this many values.
pub(crate) const ACTIVATION_BLOCK: usize = BLOCK;

/// The tensor types [`QMatrix`] loads, by their ggml names (for errors).
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS";

/// Pool tasks per thread a matmul is split into, so uneven progress still balances.
const TASKS_PER_THREAD: usize = 4;

/// A weight matrix of `rows` output features × `cols` input features.
#[derive(Debug, Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    /// F32 and F16 tensors, widened to f32 at load so one simple kernel serves both. In llama
    /// models these are only the small norm vectors, so the extra memory does not matter.
    Float(Vec<f32>),
    /// The ggml blocks regrouped eight rows at a time (`interleaved`), in owned memory that
    /// the OS cannot evict and re-read from disk in the middle of a decode step.
    Quantized { format: QuantFormat, blocks: crate::memory::StreamingBuffer },
}

/// The quantized matmul kernels this CPU runs: for one activation row (a lone decode), for a
/// batch of 32 rows, and whether 32-row batches take the 512-bit paired-group path.
pub(crate) fn kernel_names() -> (&'static str, &'static str, bool) {
    #[cfg(target_arch = "x86_64")]
    let wide = vnni512::is_available() && Kernel::best() == Kernel::Avx512Vnni && Kernel::for_rows(32) != Kernel::Amx;
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    (Kernel::for_rows(1).name(), Kernel::for_rows(32).name(), wide)
}

/// Which implementation computes the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus `vpdpbusd` in its AVX512-VNNI (with AVX512-VL) encoding; with AVX512-F/BW
    /// too, batches of 8 rows or more in Q8_0, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K take two
    /// groups per 512-bit vector (`vnni512`, same bits).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX2 plus `vpdpbusd` in its AVX-VNNI encoding.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AMX tiles, for batches of [`AMX_MIN_ROWS`] rows or more; identical bits to the VNNI
    /// kernels (see [`amx`]).
    #[cfg(target_arch = "x86_64")]
    Amx,
}

/// The batch size from which AMX beats the VNNI kernels: 8 rows are a tie, 12 rows 1.16x, 32
/// rows 1.22x (`benches/matmul.rs`; one AMX tile multiply costs the same for 1 row or 16).
#[cfg(target_arch = "x86_64")]
const AMX_MIN_ROWS: usize = 8;

/// [`AMX_MIN_ROWS`] for Q8_0, against the 512-bit VNNI pair kernel (`vnni512`). Measured on a
/// 2-core Sapphire Rapids-class Xeon (AMX-INT8), one thread, CPU time, AMX/VNNI in alternated
/// pairs (`examples/matmul_driver.rs`): 2048 × 640 Q8_0 (cache-resident) at 8 rows 0.106-0.111
/// / 0.085-0.092 ms, 12 rows 0.126-0.133 / 0.130-0.134, 16 rows 0.148-0.153 / 0.173-0.180;
/// Gemma 3's 262,144 × 640 Q8_0 head at 8 rows 21.4-22.7 / 19.1-19.4 ms, 12 rows 23.2-23.9 /
/// 20.4-21.1; and the fused head in a Gemma 3 decode at 8 streams 33.4-33.9 / 30.9-33.8 ms per
/// step, at 32 streams 72-80 / 85-97 (`examples/streams_driver.rs`).
#[cfg(target_arch = "x86_64")]
const AMX_MIN_ROWS_Q8_0: usize = 16;

impl Kernel {
    /// The fastest kernel this CPU supports.
    fn best() -> Self {
        // Checked in order on every matmul (the standard library caches the CPUID answers),
        // so this must not allocate: a warm forward step allocates nothing.
        #[cfg(target_arch = "x86_64")]
        {
            if vnni::avx512::is_available() {
                return Kernel::Avx512Vnni;
            }
            if vnni::avx::is_available() {
                return Kernel::AvxVnni;
            }
            if avx2::is_available() {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// The name [`crate::kernel_info`] reports.
    fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "avx512_vnni",
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => "avx_vnni",
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => "amx",
        }
    }

    /// The fastest kernel for a batch of `m` activation rows.
    fn for_rows(m: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if m >= AMX_MIN_ROWS && amx::is_available() {
            return Kernel::Amx;
        }
        let _ = m;
        Self::best()
    }

    /// `self`, chosen for a batch of `m` rows, for weights in `format`: AMX unpacks Q4_0, Q4_1
    /// and Q8_0 only, and Q8_0 (no unpacking to amortize) beats the 512-bit VNNI pair kernel
    /// only from [`AMX_MIN_ROWS_Q8_0`] rows; the others take the best VNNI kernel, which gives
    /// the same bits.
    fn for_format(self, format: QuantFormat, m: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Amx && (format.is_regrouped() || format == QuantFormat::Q8_0 && m < AMX_MIN_ROWS_Q8_0) {
            return Kernel::best();
        }
        let _ = (format, m);
        self
    }

    /// Every kernel this CPU can run (for tests that hold them to one another).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::is_available() {
                kernels.push(Kernel::Avx2);
            }
            if vnni::avx::is_available() {
                kernels.push(Kernel::AvxVnni);
            }
            if vnni::avx512::is_available() {
                kernels.push(Kernel::Avx512Vnni);
            }
            if amx::is_available() {
                kernels.push(Kernel::Amx);
            }
        }
        kernels
    }

    fn group_tile(
        self,
        format: QuantFormat,
        group: &[u8],
        n_blocks: usize,
        acts: &[Q8Block],
        out: &mut [[f32; LANES]; TILE],
    ) {
        match self {
            Kernel::Scalar => scalar::group_tile(format, group, n_blocks, acts, out),
            // SAFETY: `Avx2` is only chosen after `avx2::is_available()` said yes.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::group_tile(format, group, n_blocks, acts, out) },
            // SAFETY: chosen only after `vnni::avx512::is_available()` said yes.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe { vnni::avx512::group_tile(format, group, n_blocks, acts, out) },
            // SAFETY: chosen only after `vnni::avx::is_available()` said yes.
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => unsafe { vnni::avx::group_tile(format, group, n_blocks, acts, out) },
            // Whole matmuls only (`QMatrix::matmul_amx`); a single group tile goes to VNNI,
            // which gives the same bits.
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => Kernel::best().group_tile(format, group, n_blocks, acts, out),
        }
    }

    /// The SIMD kernel [`Kernel::group_tile`] runs for `format` and tiles of `n` rows, chosen
    /// once for a run of groups; `None` for the portable kernel.
    #[cfg(target_arch = "x86_64")]
    fn tile_kernel(self, format: QuantFormat, n: usize) -> Option<TileKernel> {
        match self {
            Kernel::Scalar => None,
            Kernel::Avx2 => Some(avx2::tile_kernel(format, n)),
            Kernel::Avx512Vnni => Some(vnni::avx512::tile_kernel(format, n)),
            Kernel::AvxVnni => Some(vnni::avx::tile_kernel(format, n)),
            Kernel::Amx => Kernel::best().tile_kernel(format, n),
        }
    }
}

/// One tile kernel of a module (`group_kernels!`'s `tile_kernel`), for one format and tile
/// height; the arguments are `group_tile`'s.
#[cfg(target_arch = "x86_64")]
pub(crate) type TileKernel = unsafe fn(QuantFormat, &[u8], usize, &[Q8Block], &mut [[f32; LANES]; TILE]);

thread_local! {
    /// The quantized activations of the current matmul. Thread-local so `matmul` keeps its
    /// simple signature yet does not allocate once the buffer has grown to the largest batch.
    static QUANTIZED_ACTIVATIONS: RefCell<Vec<Q8Block>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Each pool thread's AMX buffers (no allocation per step once grown to the largest batch).
    static AMX_WORKSPACE: RefCell<amx::Workspace> = const { RefCell::new(amx::Workspace::new()) };
}

impl QMatrix {
    /// Loads tensor `name`: ggml dims `[cols, rows]` (a 1-D tensor loads as a single row).
    /// Errors name the tensor: missing, unsupported type, or a shape the kernels cannot use.
    pub fn from_gguf(gguf: &GgufFile, name: &str) -> Result<Self> {
        let (info, bytes) = gguf.tensor_bytes(name)?;
        let (cols, rows) = match info.dims[..] {
            [cols] => (cols, 1),
            [cols, rows] => (cols, rows),
            _ => {
                return Err(Error::model_load(
                    gguf.path(),
                    format!("tensor `{name}` has shape {:?}; expected a matrix", info.dims),
                ))
            }
        };
        let matrix = Self::from_bytes(info.ty, rows, cols, bytes)
            .map_err(|message| Error::model_load(gguf.path(), format!("tensor `{name}`: {message}")))?;
        // Every storage is a copy (regrouped or widened): the mapped pages are no longer needed.
        gguf.release_tensor_pages(info);
        Ok(matrix)
    }

    /// [`QMatrix::from_gguf`] for raw ggml data in row-major order (`rows` rows of `cols`
    /// values of type `ty`), for benchmarks and tools that make their own weights. The error
    /// says which type, shape or size is wrong.
    pub fn from_ggml_bytes(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> std::result::Result<Self, String> {
        Self::from_bytes(ty, rows, cols, bytes)
    }

    /// Builds a matrix from raw ggml data in row-major order (`rows` rows of `cols` values).
    fn from_bytes(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> std::result::Result<Self, String> {
        // `None` for the float types.
        let format = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
            GgmlType::Q4_0 => Some(QuantFormat::Q4_0),
            GgmlType::Q4_1 => Some(QuantFormat::Q4_1),
            GgmlType::Q8_0 => Some(QuantFormat::Q8_0),
            GgmlType::Q5_0 => Some(QuantFormat::Q5_0),
            GgmlType::Q5_1 => Some(QuantFormat::Q5_1),
            GgmlType::Q2K => Some(QuantFormat::Q2K),
            GgmlType::Q3K => Some(QuantFormat::Q3K),
            GgmlType::Q4K => Some(QuantFormat::Q4K),
            GgmlType::Q5K => Some(QuantFormat::Q5K),
            GgmlType::Q6K => Some(QuantFormat::Q6K),
            GgmlType::IQ4NL => Some(QuantFormat::IQ4NL),
            GgmlType::IQ4XS => Some(QuantFormat::IQ4XS),
            other => return Err(format!("unsupported tensor type {other} (supported: {SUPPORTED_TYPES})")),
        };
        let (block_values, block_bytes) = ty.block_layout();
        if !cols.is_multiple_of(block_values) {
            return Err(format!("{cols} columns is not a multiple of the {ty} block size {block_values}"));
        }
        if bytes.len() != rows * (cols / block_values) * block_bytes {
            return Err(format!("{} bytes do not hold {rows}×{cols} {ty} values", bytes.len()));
        }
        let storage = match format {
            Some(format) if format.is_regrouped() => {
                Storage::Quantized { format, blocks: regroup::interleave(format, rows, cols / BLOCK, bytes) }
            }
            Some(format) => {
                Storage::Quantized { format, blocks: interleaved::interleave(format, rows, cols / BLOCK, bytes) }
            }
            // bf16 is the top half of an f32: widening is exact (as ggml and gguf-py do it).
            None if ty == GgmlType::BF16 => Storage::Float(
                bytes
                    .chunks_exact(2)
                    .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                    .collect(),
            ),
            None if ty == GgmlType::F16 => {
                Storage::Float(bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect())
            }
            None => {
                Storage::Float(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
        };
        Ok(Self { rows, cols, storage })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stacks matrices with the same column count and storage format into one whose rows
    /// are those of `parts` in order, so several projections of one input (Q, K and V; gate
    /// and up) run as one matmul. `None` if the parts differ in columns or format.
    pub fn concat_rows(parts: &[QMatrix]) -> Option<QMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.cols != first.cols) {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let storage = match &first.storage {
            Storage::Float(_) => Storage::Float(
                parts
                    .iter()
                    .map(|p| match &p.storage {
                        Storage::Float(values) => Some(values.as_slice()),
                        Storage::Quantized { .. } => None,
                    })
                    .collect::<Option<Vec<_>>>()?
                    .concat(),
            ),
            Storage::Quantized { format, .. }
                if parts[..parts.len() - 1].iter().all(|p| p.rows.is_multiple_of(LANES))
                    && parts
                        .iter()
                        .all(|p| matches!(&p.storage, Storage::Quantized { format: f, .. } if f == format)) =>
            {
                // Whole groups only (padding at most in the last part's last group): the
                // interleaved data simply follows on.
                let sources: Vec<&[u8]> = parts
                    .iter()
                    .map(|p| match &p.storage {
                        Storage::Quantized { blocks, .. } => &blocks[..],
                        Storage::Float(_) => &[],
                    })
                    .collect();
                let mut blocks = crate::memory::zeroed_for_streaming(sources.iter().map(|s| s.len()).sum());
                let mut at = 0;
                for source in sources {
                    blocks[at..at + source.len()].copy_from_slice(source);
                    at += source.len();
                }
                Storage::Quantized { format: *format, blocks }
            }
            Storage::Quantized { format, .. } if format.is_regrouped() => {
                // Groups of eight rows would straddle the parts: move each row's blocks.
                if parts.iter().any(|p| !matches!(&p.storage, Storage::Quantized { format: f, .. } if f == format)) {
                    return None;
                }
                let n_blocks = first.cols / BLOCK;
                let group_bytes = format.group_bytes(n_blocks);
                let mut blocks = crate::memory::zeroed_for_streaming(rows.div_ceil(LANES) * group_bytes);
                let sources = parts.iter().flat_map(|p| (0..p.rows).map(move |row| (p, row)));
                for (dst_row, (part, src_row)) in sources.enumerate() {
                    let Storage::Quantized { blocks: src, .. } = &part.storage else { return None };
                    let src_group = &src[src_row / LANES * group_bytes..][..group_bytes];
                    let dst_group = &mut blocks[dst_row / LANES * group_bytes..][..group_bytes];
                    for b in 0..n_blocks {
                        let block = regroup::extract(*format, src_group, n_blocks, b, src_row % LANES);
                        regroup::scatter(*format, &block, dst_group, n_blocks, b, dst_row % LANES);
                    }
                }
                Storage::Quantized { format: *format, blocks }
            }
            Storage::Quantized { format, .. } => {
                // Groups of eight rows would straddle the parts: regroup from the ggml rows.
                let n_blocks = first.cols / BLOCK;
                let mut ggml = Vec::with_capacity(rows * n_blocks * format.block_bytes());
                for part in parts {
                    match &part.storage {
                        Storage::Quantized { format: f, blocks } if f == format => {
                            (0..part.rows).for_each(|row| ggml.extend(interleaved::ggml_row(*f, blocks, n_blocks, row)))
                        }
                        _ => return None,
                    }
                }
                Storage::Quantized { format: *format, blocks: interleaved::interleave(*format, rows, n_blocks, &ggml) }
            }
        };
        Some(QMatrix { rows, cols: first.cols, storage })
    }

    /// Writes row `row` as f32 into `out` (`out.len() == cols`); used for embedding lookups.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows && out.len() == self.cols,
            "row {row} / len {} of a {}×{} matrix",
            out.len(),
            self.rows,
            self.cols
        );
        match &self.storage {
            Storage::Float(values) => out.copy_from_slice(&values[row * self.cols..][..self.cols]),
            Storage::Quantized { format, blocks } => {
                let group = &blocks[row / LANES * self.group_bytes()..][..self.group_bytes()];
                if format.is_regrouped() {
                    let n_blocks = self.cols / BLOCK;
                    for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
                        regroup::dequantize_block(*format, group, n_blocks, b, row % LANES, values);
                    }
                    return;
                }
                for (bytes, values) in group.chunks_exact(format.group_block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
                    let block = interleaved::decode(*format, bytes, row % LANES);
                    for (v, &q) in values.iter_mut().zip(&block.q) {
                        *v = block.d * q as f32 + block.m;
                    }
                }
            }
        }
    }

    /// `out[r * rows + i] = Σ_j self[i][j] · x[r * cols + j]` for the `m` rows of `x`.
    ///
    /// Quantized weights take 8-bit quantized activations (see the module docs); F32/F16
    /// weights take `x` as it is. Output rows are split across `pool`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], pool: &ThreadPool) {
        self.matmul_using(self.kernel(m), x, m, out, pool);
    }

    /// The kernel these weights take for `m` activation rows ([`Kernel::for_rows`], then
    /// [`Kernel::for_format`]): chosen before the activations are prepared, so they are padded
    /// to whole AMX tiles only for a matmul that runs on AMX.
    fn kernel(&self, m: usize) -> Kernel {
        match &self.storage {
            Storage::Quantized { format, .. } => Kernel::for_rows(m).for_format(*format, m),
            Storage::Float(_) => Kernel::for_rows(m),
        }
    }

    /// [`QMatrix::matmul`] over `x` whose rows the caller has already quantized with
    /// [`quantize_row`] into `quantized` (`m` rows of `cols / 32` blocks), typically in the
    /// pool pass that computed `x`, each row while it was in cache: the bits of `matmul(x, ..)`
    /// (a row's quantization depends on that row alone) without its own quantization pass and
    /// pool dispatch. Float weights take `x`; the AMX kernel, which reads whole tiles of rows,
    /// takes the blocks as they are when `m` fills whole tiles, else a copy padded with zero
    /// rows ([`padded_rows`]).
    pub(crate) fn matmul_prequantized(
        &self,
        x: &[f32],
        quantized: &[Q8Block],
        m: usize,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        let kernel = self.kernel(m);
        if !prequantized_fits(quantized, self.cols, m) {
            return self.matmul_using(kernel, x, m, out, pool);
        }
        self.check_shapes(x, m, out);
        match &self.storage {
            Storage::Float(_) => self.matmul_float(x, out, pool),
            Storage::Quantized { .. } if padded_rows(kernel, m) == m => {
                self.matmul_quantized(kernel, quantized, m, out, pool)
            }
            Storage::Quantized { .. } => QUANTIZED_ACTIVATIONS.with_borrow_mut(|acts| {
                pad_prequantized(kernel, quantized, m, acts);
                self.matmul_quantized(kernel, acts, m, out, pool)
            }),
        }
    }

    fn matmul_using(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32], pool: &ThreadPool) {
        self.check_shapes(x, m, out);
        match &self.storage {
            Storage::Float(_) => self.matmul_float(x, out, pool),
            Storage::Quantized { .. } => QUANTIZED_ACTIVATIONS.with_borrow_mut(|acts| {
                quantize_activations(kernel, x, self.cols, m, acts, pool);
                self.matmul_quantized(kernel, acts, m, out, pool);
            }),
        }
    }

    /// [`QMatrix::matmul`] of each of `parts` (same `cols`) over the same `x`, for projections
    /// stacked from tensors of different types: the activations are quantized once for all the
    /// quantized parts instead of once per part. `each(i, out_i)` receives part `i`'s output
    /// (`m` rows of `parts[i].rows()` values) in `buffer`, which grows as needed. Each part's
    /// output has the bits `parts[i].matmul(x, ..)` gives: the quantization of a row does not
    /// depend on the matrix it feeds.
    /// With `quantized`, `x`'s rows already quantized as for [`QMatrix::matmul_prequantized`]
    /// (used when they fit the kernel, else `x` is quantized here as without them).
    pub(crate) fn matmul_each(
        parts: &[QMatrix],
        x: &[f32],
        quantized: Option<&[Q8Block]>,
        m: usize,
        buffer: &mut Vec<f32>,
        pool: &ThreadPool,
        mut each: impl FnMut(usize, &[f32]),
    ) {
        let Some(first) = parts.first() else { return };
        // The shared activations are prepared for the quantized part that reads the most rows
        // (an AMX part: whole tiles); each part then runs its own kernel on them
        // (`matmul_quantized` applies `Kernel::for_format`), reading its first `m` rows.
        let kernel = parts
            .iter()
            .filter(|p| matches!(p.storage, Storage::Quantized { .. }))
            .map(|p| p.kernel(m))
            .max_by_key(|&k| padded_rows(k, m))
            .unwrap_or_else(|| Kernel::for_rows(m));
        // Taken out of the thread-local rather than borrowed in it, so that `each` may run
        // matmuls of its own (they get a buffer of their own).
        let mut acts = QUANTIZED_ACTIVATIONS.take();
        {
            let prequantized = quantized.filter(|q| prequantized_fits(q, first.cols, m));
            let as_they_are = prequantized.filter(|_| padded_rows(kernel, m) == m);
            if as_they_are.is_none() && parts.iter().any(|p| matches!(p.storage, Storage::Quantized { .. })) {
                match prequantized {
                    Some(quantized) => pad_prequantized(kernel, quantized, m, &mut acts),
                    None => quantize_activations(kernel, x, first.cols, m, &mut acts, pool),
                }
            }
            let acts = as_they_are.unwrap_or(&acts);
            for (i, part) in parts.iter().enumerate() {
                if buffer.len() < m * part.rows {
                    buffer.resize(m * part.rows, 0.0);
                }
                let out = &mut buffer[..m * part.rows];
                part.check_shapes(x, m, out);
                match &part.storage {
                    Storage::Float(_) => part.matmul_float(x, out, pool),
                    Storage::Quantized { .. } => part.matmul_quantized(kernel, acts, m, out, pool),
                }
                each(i, out);
            }
        }
        QUANTIZED_ACTIVATIONS.set(acts);
    }

    /// [`QMatrix::matmul`] over `m` rows of which some want only the index of their largest
    /// value (an output head's greedy pick): for each row `r` with `argmax_only[r]`, `argmax`
    /// receives (one entry per such row, in order) the index [`crate::sampling::argmax`] picks
    /// from the row `matmul` computes; the other rows' outputs go to `out`, packed in order
    /// (`self.rows()` values each; both vectors are resized).
    ///
    /// The quantized kernels' results are folded into a lane-wise running argmax as each
    /// kernel tile produces them, never written out: for Gemma 3's 262,144-row head at 32 rows
    /// the full output is 33 MB written and read back. The values are the bits `matmul`
    /// computes (the same kernel over the same activations; the split only decides which
    /// weight rows run together). Float weights compute the full rows, then pick.
    pub(crate) fn matmul_argmax_rows(
        &self,
        x: &[f32],
        m: usize,
        argmax_only: &[bool],
        out: &mut Vec<f32>,
        argmax: &mut Vec<u32>,
        pool: &ThreadPool,
    ) {
        assert_eq!(argmax_only.len(), m, "one argmax flag per row");
        let kernel = self.kernel(m);
        let Storage::Quantized { format, blocks } = &self.storage else {
            return self.matmul_then_argmax(x, m, argmax_only, out, argmax, pool);
        };
        let (format, blocks) = (*format, &blocks[..]);
        let n_full = argmax_only.iter().filter(|&&a| !a).count();
        out.resize(n_full * self.rows, 0.0);
        QUANTIZED_ACTIVATIONS.with_borrow_mut(|acts| {
            assert_eq!(x.len(), m * self.cols, "matmul shapes: x for m {m} on {}×{}", self.rows, self.cols);
            quantize_activations(kernel, x, self.cols, m, acts, pool);
            self.fused_argmax(kernel, format, blocks, acts, argmax_only, out, argmax, pool);
        });
    }

    /// The fallback of [`Self::matmul_argmax_rows`]: every row in full, then each argmax row
    /// picked and the other rows packed.
    fn matmul_then_argmax(
        &self,
        x: &[f32],
        m: usize,
        argmax_only: &[bool],
        out: &mut Vec<f32>,
        argmax: &mut Vec<u32>,
        pool: &ThreadPool,
    ) {
        let rows = self.rows;
        out.resize(m * rows, 0.0);
        self.matmul(x, m, out, pool);
        argmax.clear();
        let mut kept = 0;
        for (r, &only_argmax) in argmax_only.iter().enumerate() {
            if only_argmax {
                argmax.push(crate::sampling::argmax(&out[r * rows..(r + 1) * rows]));
            } else {
                out.copy_within(r * rows..(r + 1) * rows, kept * rows);
                kept += 1;
            }
        }
        out.truncate(kept * rows);
    }

    /// The fused path of [`Self::matmul_argmax_rows`] over quantized `acts`: each pool task
    /// takes a run of weight rows and folds each kernel tile's results, as they come, into a
    /// lane-wise running argmax per argmax row ([`LaneArgmax`], a few KB that stay in L1) or
    /// stores them in place for the other rows; the tasks' results are merged in row order.
    /// `kernel` is [`Self::kernel`]`(m)` (the format's rule already applied).
    #[allow(clippy::too_many_arguments)]
    fn fused_argmax(
        &self,
        kernel: Kernel,
        format: QuantFormat,
        blocks: &[u8],
        acts: &[Q8Block],
        argmax_only: &[bool],
        out: &mut [f32],
        argmax: &mut Vec<u32>,
        pool: &ThreadPool,
    ) {
        let m = argmax_only.len();
        let groups = self.rows.div_ceil(LANES);
        #[cfg(target_arch = "x86_64")]
        let amx = kernel == Kernel::Amx;
        #[cfg(target_arch = "x86_64")]
        let pairs = amx
            || kernel == Kernel::Avx512Vnni && m >= vnni512::MIN_ROWS && vnni512::pairs(format) && vnni512::is_available();
        #[cfg(not(target_arch = "x86_64"))]
        let pairs = false;
        // Units of work: 8-row groups, or pairs of them for the pair and AMX kernels.
        let units = if pairs { groups.div_ceil(2) } else { groups };
        let per_task = units.div_ceil(pool.n_threads() * TASKS_PER_THREAD).max(1);
        let n_tasks = units.div_ceil(per_task);
        ARGMAX_PACKED.with_borrow_mut(|packed| {
            pack_full_rows(argmax_only, packed);
            let packed = &*packed;
            ARGMAX_RESULTS.with_borrow_mut(|results| {
                results.clear();
                results.resize(n_tasks * m, RunningArgmax::NONE);
                let task_results = DisjointSlice::new(results);
                let out = DisjointSlice::new(out);
                pool.run(n_tasks, &|task| {
                    // SAFETY: task `task` alone writes its `m` results.
                    let best = unsafe { task_results.range_mut(task * m, m) };
                    let task_units = task * per_task..((task + 1) * per_task).min(units);
                    #[cfg(target_arch = "x86_64")]
                    if amx {
                        return with_fresh_lanes(&PAIR_LANE_SCRATCH, best, |lanes| {
                            self.amx_run(acts, m, task_units, |row, results| {
                                self.fold_tile(packed, &out, lanes, row, 0, results)
                            })
                        });
                    }
                    #[cfg(target_arch = "x86_64")]
                    if pairs {
                        return with_fresh_lanes(&PAIR_LANE_SCRATCH, best, |lanes| {
                            self.pair_run(format, blocks, acts, m, task_units, |row, first, results| {
                                self.fold_tile(packed, &out, lanes, row, first, results)
                            })
                        });
                    }
                    with_fresh_lanes(&LANE_SCRATCH, best, |lanes| {
                        self.group_run(kernel, format, blocks, acts, m, task_units, |row, first, results| {
                            self.fold_tile(packed, &out, lanes, row, first, results)
                        })
                    });
                });
                argmax.clear();
                for (r, _) in argmax_only.iter().enumerate().filter(|(_, &only)| only) {
                    let mut row_best = RunningArgmax::NONE;
                    (0..n_tasks).for_each(|task| row_best.merge(results[task * m + r]));
                    argmax.push(row_best.index());
                }
            });
        });
    }

    /// Folds a kernel tile of [`Self::fused_argmax`] (`results[r][j]`: weight row
    /// `first_row + j`, activation row `first + r`; lanes past the matrix's last row dropped)
    /// into the lanes of each argmax row, and stores each other row's values at its packed
    /// place in `out` (`packed[r]`, [`pack_full_rows`]).
    #[inline(always)]
    fn fold_tile<const W: usize>(
        &self,
        packed: &[Option<usize>],
        out: &DisjointSlice<'_, f32>,
        lanes: &mut [LaneArgmax<W>],
        first_row: usize,
        first: usize,
        results: &[[f32; W]],
    ) {
        let valid = W.min(self.rows - first_row);
        let rows = first..first + results.len();
        if valid == W && packed[rows.clone()].iter().all(Option::is_none) {
            // The common case: every row of the tile wants only its argmax.
            return LaneArgmax::offer_tile(&mut lanes[rows], first_row, results);
        }
        for (r, values) in rows.zip(results) {
            match packed[r] {
                None if valid == W => {
                    LaneArgmax::offer_tile(std::slice::from_mut(&mut lanes[r]), first_row, &[*values])
                }
                None => lanes[r].offer(first_row, &values[..valid]),
                Some(full) => {
                    // SAFETY: the task computing weight rows `first_row..first_row + W` alone
                    // writes these columns.
                    let dst = unsafe { out.range_mut(full * self.rows + first_row, valid) };
                    match <&mut [f32; W]>::try_from(&mut *dst) {
                        Ok(all) => *all = *values,
                        Err(_) => dst.copy_from_slice(&values[..valid]),
                    }
                }
            }
        }
    }

    fn check_shapes(&self, x: &[f32], m: usize, out: &[f32]) {
        assert!(
            x.len() == m * self.cols && out.len() == m * self.rows,
            "matmul shapes: x {} out {} for m {m} on {}×{}",
            x.len(),
            out.len(),
            self.rows,
            self.cols
        );
    }

    /// F32/F16 weights take `x` as it is.
    fn matmul_float(&self, x: &[f32], out: &mut [f32], pool: &ThreadPool) {
        let Storage::Float(weights) = &self.storage else { return };
        self.for_each_row_parallel(pool, out, |row, out| {
            let w_row = &weights[row * self.cols..][..self.cols];
            for (r, x_row) in x.chunks_exact(self.cols).enumerate() {
                // SAFETY: each output row `row` belongs to exactly one task.
                unsafe { out.write(r * self.rows + row, dot_f32(w_row, x_row)) };
            }
        });
    }

    /// The quantized kernels over activations [`quantize_activations`] prepared for `kernel`.
    fn matmul_quantized(&self, kernel: Kernel, acts: &[Q8Block], m: usize, out: &mut [f32], pool: &ThreadPool) {
        let Storage::Quantized { format, blocks } = &self.storage else { return };
        let kernel = kernel.for_format(*format, m);
        let out = DisjointSlice::new(out);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => self.matmul_amx(acts, &out, pool),
            _ => self.matmul_groups(kernel, *format, blocks, acts, m, &out, pool),
        }
    }

    /// The group kernels: each task takes a run of 8-row groups and applies each group to the
    /// activation rows `TILE` at a time. On 512-bit VNNI, batches of `vnni512::MIN_ROWS` rows or
    /// more in the formats `vnni512` covers take the groups in pairs instead (same bits, about
    /// half the instructions).
    #[allow(clippy::too_many_arguments)]
    fn matmul_groups(
        &self,
        kernel: Kernel,
        format: QuantFormat,
        blocks: &[u8],
        acts: &[Q8Block],
        m: usize,
        out: &DisjointSlice<'_, f32>,
        pool: &ThreadPool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512Vnni && m >= vnni512::MIN_ROWS && vnni512::pairs(format) && vnni512::is_available() {
            return self.matmul_group_pairs(format, blocks, acts, m, out, pool);
        }
        for_each_range(pool, self.rows.div_ceil(LANES), |groups| {
            self.group_run(kernel, format, blocks, acts, m, groups, |first_row, first, results| {
                self.store_tile(out, first_row, first, results)
            })
        });
    }

    /// The 8-row groups `groups` applied to the `m` activation rows, on the calling thread:
    /// `store(first weight row, first activation row, results)` receives each tile.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn group_run(
        &self,
        kernel: Kernel,
        format: QuantFormat,
        blocks: &[u8],
        acts: &[Q8Block],
        m: usize,
        groups: std::ops::Range<usize>,
        mut store: impl FnMut(usize, usize, &[[f32; LANES]]),
    ) {
        let n_blocks = self.cols / BLOCK;
        let group_bytes = self.group_bytes();
        assert!(group_bytes == format.group_bytes(n_blocks) && acts.len() >= m * n_blocks);
        // The kernels for full tiles and for the last one, chosen once per run of groups.
        #[cfg(target_arch = "x86_64")]
        let tile_kernels = [TILE.min(m).max(1), (m.max(1) - 1) % TILE + 1].map(|n| kernel.tile_kernel(format, n));
        let mut results = [[0f32; LANES]; TILE];
        // Where a group's super-block headers start (K-quants, IQ4_XS), or its end.
        let header_at = if format.has_super_header() { format.scale_fields_at(n_blocks, 0) } else { group_bytes };
        for g in groups {
            let group = &blocks[g * group_bytes..][..group_bytes];
            // The next group's headers: the K-quants keep a group's `d`/`dmin` at its end
            // (`regroup`), which the first block's epilogue needs long before the stream of
            // blocks reaches them, a miss per group when the weights come from memory. Only
            // those few lines: prefetching the weights themselves made the 1..15-row kernels
            // slower (see [`PrefetchShares`]). Measured at one row, 400 copies cycled so each
            // matrix comes from memory (`matmul_driver ... 1 30 400 400`), CPU time,
            // without/with, three alternated pairs: Q6_K 576 x 1536 38.8/40.9/40.2 ->
            // 30.1/29.7/28.1 us, Q4_K 576 x 1536 24.5/25.3/23.9 -> 21.1/20.8/19.9 us; Q5_0 (no
            // headers) and cache-resident matrices unchanged.
            prefetch_lines(blocks.get((g + 1) * group_bytes + header_at..(g + 2) * group_bytes).unwrap_or_default());
            for first in (0..m).step_by(TILE) {
                let n = TILE.min(m - first);
                let tile_acts = &acts[first * n_blocks..(first + n) * n_blocks];
                #[cfg(target_arch = "x86_64")]
                if let Some(tile_kernel) = tile_kernels[usize::from(first + TILE > m)] {
                    // SAFETY: `kernel` is only chosen where the CPU runs it; `group` holds
                    // one group of `n_blocks` blocks and `tile_acts` `n` rows of them (the
                    // assertion above and the slicing), the tile height `tile_kernel` took.
                    unsafe { tile_kernel(format, group, n_blocks, tile_acts, &mut results) };
                    store(g * LANES, first, &results[..n]);
                    continue;
                }
                kernel.group_tile(format, group, n_blocks, tile_acts, &mut results);
                store(g * LANES, first, &results[..n]);
            }
        }
    }

    /// [`vnni512::pair_tile`]: each task takes a run of group pairs (16 weight
    /// rows; the last pair of an odd group count pairs the last group with itself and keeps
    /// one half). While a pair's tiles run, the next pair's weights are prefetched, a share
    /// per tile, spread over its blocks ([`PrefetchShares`]).
    #[cfg(target_arch = "x86_64")]
    fn matmul_group_pairs(
        &self,
        format: QuantFormat,
        blocks: &[u8],
        acts: &[Q8Block],
        m: usize,
        out: &DisjointSlice<'_, f32>,
        pool: &ThreadPool,
    ) {
        for_each_range(pool, self.rows.div_ceil(LANES).div_ceil(2), |pairs| {
            self.pair_run(format, blocks, acts, m, pairs, |first_row, first, results| {
                self.store_tile(out, first_row, first, results)
            })
        });
    }

    /// The group pairs `pairs` applied to the `m` activation rows, on the calling thread (see
    /// [`Self::matmul_group_pairs`]): `store(first weight row, first activation row, results)`
    /// receives each tile. Call only where `vnni512::is_available()`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn pair_run(
        &self,
        format: QuantFormat,
        blocks: &[u8],
        acts: &[Q8Block],
        m: usize,
        pairs: std::ops::Range<usize>,
        mut store: impl FnMut(usize, usize, &[[f32; vnni512::PAIR_LANES]]),
    ) {
        let n_blocks = self.cols / BLOCK;
        let group_bytes = self.group_bytes();
        let groups = self.rows.div_ceil(LANES);
        let n_tiles = m.div_ceil(TILE);
        let mut results = [[0f32; vnni512::PAIR_LANES]; TILE];
        for pair in pairs {
            let g = 2 * pair;
            let first_group = &blocks[g * group_bytes..][..group_bytes];
            let second_group = &blocks[(g + 1).min(groups - 1) * group_bytes..][..group_bytes];
            let next_pair = blocks.get((g + 2) * group_bytes..).unwrap_or_default();
            let next_pair = &next_pair[..next_pair.len().min(2 * group_bytes)];
            let next_pair = PrefetchShares::new(next_pair, n_tiles);
            for (tile, first) in (0..m).step_by(TILE).enumerate() {
                let ahead = next_pair.share(tile);
                let n = TILE.min(m - first);
                let tile_acts = &acts[first * n_blocks..(first + n) * n_blocks];
                let pair = [first_group, second_group];
                // SAFETY: the caller checked `vnni512::is_available()`.
                unsafe { vnni512::pair_tile(format, pair, n_blocks, tile_acts, ahead, &mut results) };
                store(g * LANES, first, &results[..n]);
            }
        }
    }

    /// Writes a tile's results (`results[r][j]`: weight row `first_row + j`, activation row
    /// `first + r`), dropping lanes past the matrix's last row.
    fn store_tile<const W: usize>(
        &self,
        out: &DisjointSlice<'_, f32>,
        first_row: usize,
        first: usize,
        results: &[[f32; W]],
    ) {
        let lanes = W.min(self.rows - first_row);
        for (r, row_results) in results.iter().enumerate() {
            // SAFETY: the output rows of these groups belong to the calling task alone.
            let dst = unsafe { out.range_mut((first + r) * self.rows + first_row, lanes) };
            match <&mut [f32; W]>::try_from(&mut *dst) {
                // A fixed-size copy compiles to one vector store, not a memmove call.
                Ok(full) => *full = *row_results,
                Err(_) => dst.copy_from_slice(&row_results[..lanes]),
            }
        }
    }

    /// The AMX kernel: each task takes a run of group pairs (16 weight rows) and applies each
    /// to all activation rows (`acts`: padded to whole tiles; only the first `out.len() / rows`
    /// rows are stored).
    #[cfg(target_arch = "x86_64")]
    fn matmul_amx(&self, acts: &[Q8Block], out: &DisjointSlice<'_, f32>, pool: &ThreadPool) {
        let m = out.len() / self.rows;
        for_each_range(pool, self.rows.div_ceil(LANES).div_ceil(2), |pairs| {
            self.amx_run(acts, m, pairs, |first_row, results| {
                let lanes = amx::ROWS.min(self.rows - first_row);
                for (r, row_results) in results.iter().enumerate() {
                    // SAFETY: the output rows of this pair belong to this task alone; AVX-512
                    // is available (part of `amx::is_available()`).
                    unsafe { amx::store_row(row_results, out.range_mut(r * self.rows + first_row, lanes)) };
                }
            })
        });
    }

    /// The group pairs `pairs` of these quantized weights (16 rows each; the last pair of an
    /// odd group count has zero rows for its second group) applied on AMX to the first `m`
    /// activation rows of `acts` (padded to whole tiles, [`quantize_activations`]), on the
    /// calling thread:
    /// `each(first weight row, results)` receives each pair's results, `results[r][j]` for
    /// weight row `first_row + j` (lanes past the matrix's last row included) and activation
    /// row `r < m`. The one place that calls [`amx::pair_matmul`]. Call only where
    /// `Kernel::Amx` was chosen (after `amx::is_available()` said yes).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn amx_run(
        &self,
        acts: &[Q8Block],
        m: usize,
        pairs: std::ops::Range<usize>,
        mut each: impl FnMut(usize, &[[f32; amx::ROWS]]),
    ) {
        let Storage::Quantized { format, blocks } = &self.storage else { return };
        let (format, blocks, n_blocks) = (*format, &blocks[..], self.cols / BLOCK);
        let group_bytes = self.group_bytes();
        let groups = self.rows.div_ceil(LANES);
        AMX_WORKSPACE.with_borrow_mut(|workspace| {
            // SAFETY: `Kernel::Amx` is only chosen after `amx::is_available()` said yes.
            let tiles = unsafe { amx::Tiles::configure() };
            for p in pairs {
                let group = |g: usize| if g < groups { &blocks[g * group_bytes..][..group_bytes] } else { &[][..] };
                let pair = [group(2 * p), group(2 * p + 1)];
                // The next pair's two groups lie side by side (empty after the last pair).
                let next = &blocks[(2 * p + 2).min(groups) * group_bytes..(2 * p + 4).min(groups) * group_bytes];
                // SAFETY: as above; `tiles` configured this thread.
                unsafe { amx::pair_matmul(&tiles, workspace, format, pair, next, n_blocks, acts, m) };
                each(2 * p * LANES, &workspace.results()[..m]);
            }
        })
    }

    /// Runs `f(row, out)` for every weight row, in contiguous row ranges spread over the pool.
    fn for_each_row_parallel(
        &self,
        pool: &ThreadPool,
        out: &mut [f32],
        f: impl Fn(usize, &DisjointSlice<'_, f32>) + Sync,
    ) {
        let out = DisjointSlice::new(out);
        for_each_range(pool, self.rows, |rows| rows.for_each(|row| f(row, &out)));
    }

    /// Bytes of one group of eight interleaved rows (quantized storage only).
    fn group_bytes(&self) -> usize {
        match &self.storage {
            Storage::Float(_) => 0,
            Storage::Quantized { format, .. } => format.group_bytes(self.cols / BLOCK),
        }
    }
}

/// A run of weights to prefetch a share at a time, while other weights are computed on.
///
/// The pair kernels read each pair's ~11 KB of weights from memory once, then reuse it from
/// the caches for every tile of activation rows; at 8 rows and more they compute fast enough
/// that the first tile waits for memory whenever the matrix is larger than the caches (Gemma
/// 3's 178 MB output head, and every layer at 32 streams, whose weights together exceed the
/// L3): the hardware prefetcher stops at each 4 KiB page. So the next pair's lines are spread
/// over the current pair's tiles, and each tile's share over its blocks (the kernel prefetches
/// one share per block): a few lines at a time, never a burst. Measured on Zen
/// 4, one thread, CPU time (`examples/matmul_driver.rs`): a share per tile took the
/// 262144 × 640 Q8_0 head at 32 rows 48 -> 42 ms, a 65536 × 640 Q5_0 matrix at 32 rows
/// 13-15 -> 11 ms, a cache-resident Q5_0 at 512 rows unchanged. Spreading each tile's share
/// over its blocks (a burst of 54 lines a tile left a 16384 × 2048 Q6_K 16% slower than the
/// same work from the caches) then took that Q6_K at 32 rows 10.4-10.6 -> 8.4 ms and the head
/// 35.3-39.5 -> 32.3-33.5 ms (with the kernels' activation rows cut once, see
/// `vnni512::activation_rows`). The 256-bit kernels at 1..7 rows stream one group at a time and there the
/// hardware prefetcher alone was faster (software prefetching made the head at one row
/// 30-60% slower), so they do not call this. A hint only: no result depends on it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct PrefetchShares<'a> {
    bytes: &'a [u8],
    share_bytes: usize,
}

#[cfg(target_arch = "x86_64")]
impl<'a> PrefetchShares<'a> {
    const LINE: usize = 64;

    /// `bytes` cut into `count` shares of whole cache lines (the last ones shorter or empty).
    #[inline]
    pub(crate) fn new(bytes: &'a [u8], count: usize) -> Self {
        let share_bytes = bytes.len().div_ceil(Self::LINE).div_ceil(count.max(1)) * Self::LINE;
        Self { bytes, share_bytes }
    }

    /// The bytes of share `share` (empty past the end).
    #[inline]
    pub(crate) fn share(self, share: usize) -> &'a [u8] {
        let start = (share * self.share_bytes).min(self.bytes.len());
        &self.bytes[start..(start + self.share_bytes).min(self.bytes.len())]
    }

    /// Asks the CPU to start loading share `share` into its caches.
    #[inline]
    pub(crate) fn prefetch(self, share: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // Plain offsets rather than `share`'s slice: this runs once per block of a kernel.
        let mut at = share * self.share_bytes;
        let end = (at + self.share_bytes).min(self.bytes.len());
        while at < end {
            // SAFETY: `at < bytes.len()`; a prefetch never faults and changes nothing a
            // program can observe but its timing (SSE, part of x86_64).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.bytes.as_ptr().add(at) as *const i8) };
            at += Self::LINE;
        }
    }
}

thread_local! {
    /// The calling thread's per-task results of [`QMatrix::matmul_argmax_rows`].
    static ARGMAX_RESULTS: RefCell<Vec<RunningArgmax>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's [`pack_full_rows`] of the current call.
    static ARGMAX_PACKED: RefCell<Vec<Option<usize>>> = const { RefCell::new(Vec::new()) };
    /// Each thread's lane states for the task it runs (reused, so a warm step allocates nothing).
    static LANE_SCRATCH: RefCell<Vec<LaneArgmax<LANES>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// [`LANE_SCRATCH`] for the 512-bit pair kernel's 16-lane tiles.
    static PAIR_LANE_SCRATCH: RefCell<Vec<LaneArgmax<{ vnni512::PAIR_LANES }>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `fold` over one fresh [`LaneArgmax`] per activation row, taken from this thread's
/// `scratch` (reused, so a warm step allocates nothing), then writes each row's best to `best`.
fn with_fresh_lanes<const W: usize>(
    scratch: &'static std::thread::LocalKey<RefCell<Vec<LaneArgmax<W>>>>,
    best: &mut [RunningArgmax],
    fold: impl FnOnce(&mut [LaneArgmax<W>]),
) {
    scratch.with_borrow_mut(|lanes| {
        lanes.clear();
        lanes.resize(best.len(), LaneArgmax::NONE);
        fold(lanes);
        best.iter_mut().zip(lanes.iter()).for_each(|(best, lanes)| *best = lanes.best());
    })
}

/// For each row of [`QMatrix::matmul_argmax_rows`], `None` for an argmax row, else its place
/// among the rows whose values are written out (into `packed`, whose allocation is reused).
fn pack_full_rows(argmax_only: &[bool], packed: &mut Vec<Option<usize>>) {
    let mut kept = 0;
    packed.clear();
    packed.extend(argmax_only.iter().map(|&only_argmax| {
        (!only_argmax).then(|| {
            kept += 1;
            kept - 1
        })
    }));
}

/// Rows from which a matmul's activations are quantized on the pool rather than by the calling
/// thread alone (a decode step's few rows take less than waking the pool).
const PARALLEL_QUANTIZE_ROWS: usize = 16;

/// Quantizes the `m` rows of `x` (`cols` each) into `acts`, sized for `kernel`: the AMX kernel
/// reads whole tiles of activation rows, so it gets zero rows up to a whole tile. Rows are
/// quantized one by one ([`quantize_row`]) whichever thread takes them, so the bits do not
/// depend on the split.
fn quantize_activations(kernel: Kernel, x: &[f32], cols: usize, m: usize, acts: &mut Vec<Q8Block>, pool: &ThreadPool) {
    let n_blocks = cols / BLOCK;
    acts.resize(padded_rows(kernel, m) * n_blocks, Q8Block::default());
    let (rows, padding) = acts.split_at_mut(m * n_blocks);
    padding.fill(Q8Block::default());
    let quantize = |x: &[f32], acts: &mut [Q8Block]| {
        for (x_row, act_row) in x.chunks_exact(cols).zip(acts.chunks_exact_mut(n_blocks)) {
            quantize_row(x_row, act_row);
        }
    };
    if m < PARALLEL_QUANTIZE_ROWS || pool.n_threads() == 1 {
        return quantize(&x[..m * cols], rows);
    }
    let rows = DisjointSlice::new(rows);
    for_each_range(pool, m, |range| {
        // SAFETY: each task writes the blocks of its own rows only.
        let acts = unsafe { rows.range_mut(range.start * n_blocks, range.len() * n_blocks) };
        quantize(&x[range.start * cols..range.end * cols], acts);
    });
}

/// The activation rows `kernel` reads for `m` rows: the AMX kernel reads whole tiles of
/// [`amx::TOKENS`] rows, the rows past `m` zero.
fn padded_rows(kernel: Kernel, m: usize) -> usize {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => m.next_multiple_of(amx::TOKENS),
        _ => m,
    }
}

/// `quantized` (`m` rows) copied into `acts` and padded with zero rows to
/// [`padded_rows`]`(kernel, m)`: copying the blocks costs a fraction of quantizing the rows
/// again, which the AMX kernel did for every pre-quantized matmul whose `m` is not a whole
/// number of tiles (and, before, for all of them).
fn pad_prequantized(kernel: Kernel, quantized: &[Q8Block], m: usize, acts: &mut Vec<Q8Block>) {
    let n_blocks = quantized.len() / m.max(1);
    acts.clear();
    acts.extend_from_slice(quantized);
    acts.resize(padded_rows(kernel, m) * n_blocks, Q8Block::default());
}

/// Whether `quantized` can stand for the activations [`quantize_activations`] would prepare
/// from `m` rows of `cols`: one block per 32 values of every row (padding for the AMX tiles,
/// where `m` needs it, is added by [`pad_prequantized`]).
fn prequantized_fits(quantized: &[Q8Block], cols: usize, m: usize) -> bool {
    let fits = cols.is_multiple_of(BLOCK) && quantized.len() == m * (cols / BLOCK);
    debug_assert!(
        fits || !cols.is_multiple_of(BLOCK),
        "{} pre-quantized blocks for {m} rows of {cols}",
        quantized.len()
    );
    fits
}

/// Splits `0..count` into contiguous ranges, [`TASKS_PER_THREAD`] per pool thread, and runs
/// `f` on each as one pool task.
fn for_each_range(pool: &ThreadPool, count: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let per_task = count.div_ceil(pool.n_threads() * TASKS_PER_THREAD).max(1);
    pool.run(count.div_ceil(per_task), &|task| f(task * per_task..((task + 1) * per_task).min(count)));
}

/// Dot product with eight independent lane sums, combined in a fixed order: the compiler
/// vectorises it (a single running sum would force sequential adds), and the result depends
/// only on the two vectors.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; 8];
    let (a_body, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(8).zip(b_body.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    let pairs = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}
