//! AMX tile kernels (Sapphire Rapids and later Xeons) for batches of activation rows.
//!
//! One `tdpbsud`/`tdpbssd` multiplies a tile of 16 activation rows × 32 quantized values (one
//! block each) by a tile of 32 values × 16 weight rows and leaves the 16 × 16 exact block dot
//! products in 32-bit lanes: 8,192 multiply-adds in one instruction, where the VNNI kernels
//! need 64 `vpdpbusd`. What remains on the vector units is the float epilogue per block
//! (`d_w d_a · dot + m_w s_a` into the accumulator). A tile multiply costs the same for 1 row
//! as for 16, so AMX pays off from about 8-12 rows (`AMX_MIN_ROWS`); smaller batches stay on
//! the VNNI kernel.
//!
//! **Identical bits.** The block dot products are exact integers, and the epilogue is the VNNI
//! kernel's, operation for operation, on 16 weight rows per vector instead of 8. So whether a
//! matmul runs here or on the VNNI path does not change a single output bit, which is what lets
//! `Kernel::for_rows` pick by batch size without breaking batch invariance.
//!
//! Layout: the weight tile of a block is the VNNI layout of `tdpb*` ("B" operand): 8 rows of
//! 64 bytes, row `v` holding weights `4v..4v+4` of each of 16 weight rows. That is our
//! interleaved vector `v` of two consecutive 8-row groups side by side, so each block of a pair
//! of groups is unpacked (Q4 nibbles to bytes) once into an L1-resident tile and reused for
//! every tile of activation rows. The activation tile ("A") is read straight from the quantized
//! blocks with a row stride of one activation row.
//!
//! The tile registers are used through inline assembly (the AMX intrinsics are not stable in
//! Rust); no compiler-generated code touches them. Linux hands out AMX state only after the
//! process asks for it (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), done once in [`is_available`].

use std::arch::asm;
use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::sync::OnceLock;

use super::activations::Q8Block;
use super::blocks::{QuantFormat, BLOCK};
use super::interleaved::{m_at, LANES};
use super::PrefetchShares;

/// Weight rows one tile covers: two interleaved groups.
pub const ROWS: usize = 2 * LANES;

/// Activation rows one tile covers; a matmul's activations are padded to a multiple of this.
pub const TOKENS: usize = 16;

/// Bytes of one block's unpacked weight tile: `BLOCK / 4` rows of `ROWS * 4` bytes.
const TILE_BYTES: usize = BLOCK * ROWS;

/// Bytes per row of the weight tile (and of the result tile: 16 × i32).
const TILE_ROW_BYTES: usize = 4 * ROWS;

/// Whether this CPU and OS can run the kernels in this module (asks the OS once).
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE
        .get_or_init(|| crate::cpu::has_amx_int8() && crate::cpu::has_avx2_fma_f16c() && request_tile_data_permission())
}

/// Linux keeps the 8 KiB tile-data state off until the process asks: without this, the first
/// tile instruction is `SIGILL`. Other systems: no AMX here (we cannot test them).
#[cfg(target_os = "linux")]
fn request_tile_data_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted xsave
    // features; it fails cleanly on kernels or CPUs without AMX.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data_permission() -> bool {
    false
}

/// The `ldtilecfg` operand (palette 1): tile `i` has `rows[i]` rows of `colsb[i]` bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Multiplies in flight: each one's epilogue runs `DEPTH - 1` multiplies after it was issued,
/// by when its result tile has reached memory.
const DEPTH: usize = 4;

/// tmm0, tmm3, tmm4, tmm5: results (16 activation rows × 16 i32), one per slot of the ring;
/// tmm1, tmm6: activations (16 rows × one 32-byte block), alternating; tmm2, tmm7: weights
/// (8 rows × 16 weight rows × 4 bytes), alternating.
const CONFIG: TileConfig = {
    let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    let mut tile = 0;
    while tile < 8 {
        (config.colsb[tile], config.rows[tile]) = match tile {
            1 | 6 => (BLOCK as u16, TOKENS as u8),
            2 | 7 => (TILE_ROW_BYTES as u16, (BLOCK / 4) as u8),
            _ => (TILE_ROW_BYTES as u16, TOKENS as u8),
        };
        tile += 1;
    }
    config
};

/// Tile registers configured for this module on the current thread, released on drop (so a
/// thread that is not computing does not carry 8 KiB of tile state through context switches).
/// Not `Send`: the configuration belongs to the thread that loaded it.
pub struct Tiles(PhantomData<*const ()>);

impl Tiles {
    /// # Safety
    /// [`is_available`] must have returned true.
    pub unsafe fn configure() -> Self {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        Tiles(PhantomData)
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured (`configure` is the only constructor).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Unpacks block `b` of the two 8-row groups `pair` (the second may be absent: zero rows)
/// into one weight tile.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_block(format: QuantFormat, pair: [&[u8]; 2], b: usize, tile: &mut WeightTile) {
    let (block_bytes, values_at) = (format.group_block_bytes(), format.values_offset());
    let nibble = _mm256_set1_epi8(0x0f);
    let base = tile.0.as_mut_ptr();
    for (half, group) in pair.into_iter().enumerate() {
        let row = |v: usize| base.add(v * TILE_ROW_BYTES + half * 4 * LANES) as *mut __m256i;
        if group.is_empty() {
            (0..BLOCK / 4).for_each(|v| _mm256_storeu_si256(row(v), _mm256_setzero_si256()));
            continue;
        }
        let values = group[b * block_bytes + values_at..][..block_bytes - values_at].as_ptr();
        match format {
            QuantFormat::Q8_0 => {
                for v in 0..BLOCK / 4 {
                    _mm256_storeu_si256(row(v), _mm256_loadu_si256(values.add(32 * v) as *const __m256i));
                }
            }
            // Packed vector p holds vector 2p in its low nibbles and 2p + 1 in its high ones.
            _ if format.is_regrouped() => unreachable!("AMX serves Q4_0, Q4_1 and Q8_0 only"),
            _ => {
                for p in 0..BLOCK / 8 {
                    let packed = _mm256_loadu_si256(values.add(32 * p) as *const __m256i);
                    _mm256_storeu_si256(row(2 * p), _mm256_and_si256(packed, nibble));
                    _mm256_storeu_si256(row(2 * p + 1), _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble));
                }
            }
        }
    }
}

/// `workspace.results()[t][j] = weight row j of the pair · activation row t` for the first `m`
/// activation rows in `acts` (a multiple of [`TOKENS`] rows, `n_blocks` blocks each; the rest
/// is padding). `pair` holds two 8-row groups' blocks (the second may be empty: zero rows).
/// `next` is the next pair's bytes (or empty): prefetched a share per round of the loop, so the
/// next call's unpacking finds them in the caches (a hint only).
///
/// Activation tiles outer, blocks inner. First all of the pair's blocks are unpacked, with
/// their scales as f32, into [`Workspace`]'s pair buffer (640 bytes a block: 11-40 KB of it
/// for 576-2048 columns), once for every tile of activation rows. Then each tile of 16 activation
/// rows runs through the blocks with its 16 accumulators (16 rows × 16 weight rows) in vector
/// registers from the first block to the last, where the loop with blocks outer loaded and
/// stored every row's accumulator per block and tile. Vector loads do not take data from tile
/// stores, so the hand-off is software-pipelined: a ring of [`DEPTH`] result tiles and buffers
/// keeps several multiplies in flight, block `b`'s epilogue running after block
/// `b + DEPTH - 1`'s multiply was issued; the ring runs on from one activation tile to the
/// next, so a tile's last epilogues overlap the next tile's first multiplies.
///
/// # Safety
/// [`is_available`] must have returned true and `_tiles` must be this thread's configuration.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn pair_matmul(
    _tiles: &Tiles,
    workspace: &mut Workspace,
    format: QuantFormat,
    pair: [&[u8]; 2],
    next: &[u8],
    n_blocks: usize,
    acts: &[Q8Block],
    m: usize,
) {
    let block_bytes = format.group_block_bytes();
    let tokens = acts.len() / n_blocks.max(1);
    assert!(tokens.is_multiple_of(TOKENS) && acts.len() == tokens * n_blocks && n_blocks > 0 && m <= tokens);
    assert!(pair.iter().all(|g| g.is_empty() || g.len() == n_blocks * block_bytes) && !pair[0].is_empty());
    let Workspace { blocks, dots, results } = workspace;
    // Grown once to the largest batch and matrix; later calls only overwrite. Each pool thread
    // has its own, and which thread first meets the widest matrix depends on the pool's split:
    // so the pair buffer starts at 128 blocks (4096 columns, 80 KB), lest a warm step grow it.
    if results.len() < tokens {
        results.resize(tokens, [0.0; ROWS]);
    }
    if blocks.len() < n_blocks {
        blocks.resize_with(n_blocks.max(128), PairBlock::zeroed);
    }
    for (b, block) in blocks[..n_blocks].iter_mut().enumerate() {
        unpack_block(format, pair, b, &mut block.tile);
        BlockScales::load(format, pair, b * block_bytes).store(block);
    }
    let tiles = m.div_ceil(TOKENS);
    let run = Run { blocks: &blocks[..n_blocks], acts, n_blocks, tiles, m, next };
    let out = &mut results[..tiles * TOKENS];
    match format {
        QuantFormat::Q8_0 => run.tiles::<true, false>(dots, out),
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => run.tiles::<false, true>(dots, out),
        _ => unreachable!("AMX serves Q4_0, Q4_1 and Q8_0 only"),
    }
}

/// One [`pair_matmul`] after its unpacking: the pair's blocks and the activation rows.
struct Run<'a> {
    blocks: &'a [PairBlock],
    acts: &'a [Q8Block],
    n_blocks: usize,
    /// Tiles of [`TOKENS`] activation rows to compute, and the rows that count (`m`).
    tiles: usize,
    m: usize,
    /// The next pair's bytes, prefetched a share per round of the loop.
    next: &'a [u8],
}

impl Run<'_> {
    /// The tile loop for one kind of format: `SIGNED` weights (`tdpbssd`, else `tdpbsud` for
    /// unsigned nibbles) and an `OFFSET` term `m_w s_a` in the epilogue. Writes `out[t]` for
    /// the first `m` rows (and padding rows up to a whole half-tile, never read).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn tiles<const SIGNED: bool, const OFFSET: bool>(&self, dots: &mut [Dots; DEPTH], out: &mut [[f32; ROWS]]) {
        let n_blocks = self.n_blocks;
        assert!(out.len() == self.tiles * TOKENS && self.acts.len() >= out.len() * n_blocks);
        assert!(self.m <= self.tiles * TOKENS && self.m + TOKENS > self.tiles * TOKENS);
        let shares = PrefetchShares::new(self.next, self.tiles * (n_blocks + DEPTH - 1));
        for tile in 0..self.tiles {
            // Padding rows past `m` are multiplied (a tile is 16 rows) but only a whole last
            // half-tile of them skips the epilogue: at 8 rows that halves the vector work.
            match self.m - tile * TOKENS {
                ..=8 => self.tile::<SIGNED, OFFSET, 8>(tile, shares, dots, out),
                _ => self.tile::<SIGNED, OFFSET, TOKENS>(tile, shares, dots, out),
            }
        }
    }

    /// Tile `tile` of activation rows, the epilogue for its first `LIVE` rows only (8 or 16).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn tile<const SIGNED: bool, const OFFSET: bool, const LIVE: usize>(
        &self,
        tile: usize,
        shares: PrefetchShares,
        dots: &mut [Dots; DEPTH],
        out: &mut [[f32; ROWS]],
    ) {
        let n_blocks = self.n_blocks;
        let act_stride = n_blocks * std::mem::size_of::<Q8Block>();
        let tile_acts = |tile: usize| &self.acts[tile * TOKENS * n_blocks..][..TOKENS * n_blocks];
        let acts = tile_acts(tile);
        let next_acts = (tile + 1 < self.tiles).then(|| tile_acts(tile + 1));
        // The ring runs on across tiles: block `b` of tile `tile` is step `first + b` and takes
        // ring slot `(first + b) % DEPTH`.
        let first = tile * n_blocks;
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        // The last `DEPTH - 1` rounds drain the ring, oldest first (the blocks add in order),
        // while they issue the next tile's first multiplies (which its own first rounds then
        // skip). Each call site once, so everything inlines and `acc` stays in registers.
        for b in 0..n_blocks + DEPTH - 1 {
            let (issue_acts, block) = match b < n_blocks {
                true => (Some(acts).filter(|_| tile == 0 || b >= DEPTH - 1), b),
                false => (next_acts, b - n_blocks),
            };
            if let Some(issue_acts) = issue_acts.filter(|_| block < n_blocks) {
                let (slot, w) = ((first + b) % DEPTH, self.blocks[block].tile.0.as_ptr());
                multiply_tile::<SIGNED>(slot, issue_acts[block].q.as_ptr(), act_stride, w, &mut dots[slot]);
            }
            shares.prefetch(tile * (n_blocks + DEPTH - 1) + b);
            if b + 1 >= DEPTH {
                let e = b + 1 - DEPTH;
                let scales = BlockScales::stored(&self.blocks[e]);
                let dots = &dots[(first + e) % DEPTH];
                let act = acts[e..].as_ptr();
                // Written out 16 times: as a loop LLVM kept `acc` in memory.
                macro_rules! row {
                    ($($t:literal)*) => {$(
                        if $t < LIVE {
                            // SAFETY: row `t` of the tile, block `e` (`acts` is the tile's rows).
                            let dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots.0[$t].as_ptr() as *const _));
                            acc[$t] = epilogue_row::<OFFSET>(&scales, &*act.add($t * n_blocks), dot, acc[$t]);
                        }
                    )*};
                }
                const _: () = assert!(TOKENS == 16, "row! names the rows of a tile");
                row!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            }
        }
        for (row, acc) in out[tile * TOKENS..][..LIVE].iter_mut().zip(acc) {
            _mm512_storeu_ps(row.as_mut_ptr(), acc);
        }
    }
}

/// Writes the first `dst.len()` (at most 16) results of `row` to `dst` in one masked store.
///
/// # Safety
/// The CPU must support AVX-512 (implied by [`is_available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn store_row(row: &[f32; ROWS], dst: &mut [f32]) {
    assert!(dst.len() <= ROWS);
    let mask = ((1u32 << dst.len()) - 1) as __mmask16;
    _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask, _mm512_loadu_ps(row.as_ptr()));
}

/// One block's weight scales `d` and offsets `m` for the 16 rows of a pair, as f32.
struct BlockScales {
    d: __m512,
    m: __m512,
}

impl BlockScales {
    /// From the group blocks at byte `at` of each group of `pair` (zeros for a missing group).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn load(format: QuantFormat, pair: [&[u8]; 2], at: usize) -> Self {
        let f16x16 = |offset: usize| {
            let [low, high] = pair.map(|group| match group.is_empty() {
                true => _mm_setzero_si128(),
                false => _mm_loadu_si128(group[at + offset..][..16].as_ptr() as *const __m128i),
            });
            _mm512_cvtph_ps(_mm256_set_m128i(high, low))
        };
        let d = f16x16(0);
        let m = match format {
            QuantFormat::Q4_1 => f16x16(m_at(0)),
            QuantFormat::Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            QuantFormat::Q8_0 => _mm512_setzero_ps(),
            _ => unreachable!("AMX serves Q4_0, Q4_1 and Q8_0 only"),
        };
        Self { d, m }
    }

    /// Into the pair buffer's `block`, for every tile of activation rows to read back.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store(&self, block: &mut PairBlock) {
        _mm512_store_ps(block.d.as_mut_ptr(), self.d);
        _mm512_store_ps(block.m.as_mut_ptr(), self.m);
    }

    /// What [`BlockScales::store`] put into `block`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn stored(block: &PairBlock) -> Self {
        Self { d: _mm512_load_ps(block.d.as_ptr()), m: _mm512_load_ps(block.m.as_ptr()) }
    }
}

/// The VNNI kernel's epilogue for one activation row (block `act`), 16 weight rows per vector:
/// `acc + d_w d_a · dot (+ m_w s_a)`, operation for operation.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn epilogue_row<const OFFSET: bool>(scales: &BlockScales, act: &Q8Block, dot: __m512, acc: __m512) -> __m512 {
    let scale = _mm512_mul_ps(scales.d, _mm512_set1_ps(act.d));
    match OFFSET {
        false => _mm512_fmadd_ps(scale, dot, acc),
        true => _mm512_add_ps(acc, _mm512_fmadd_ps(scale, dot, _mm512_mul_ps(scales.m, _mm512_set1_ps(act.s)))),
    }
}

/// One block's dot products for 16 activation rows (`a`, rows `a_stride` bytes apart) against
/// the weight tile at `w`, into `dots`, through ring slot `slot`'s tiles.
#[inline(always)]
unsafe fn multiply_tile<const SIGNED: bool>(slot: usize, a: *const i8, a_stride: usize, w: *const u8, dots: &mut Dots) {
    let c = dots.0.as_mut_ptr();
    // Signed activations × unsigned Q4 nibbles (tdpbsud), or × signed Q8_0 weights (tdpbssd).
    macro_rules! tile_op {
        ($op:literal, $result:literal, $acts:literal, $weights:literal) => {
            asm!(
                concat!("tilezero ", $result),
                concat!("tileloadd ", $acts, ", [{a} + {a_stride}]"),
                concat!("tileloadd ", $weights, ", [{w} + {w_stride}]"),
                concat!($op, " ", $result, ", ", $acts, ", ", $weights),
                concat!("tilestored [{c} + {c_stride}], ", $result),
                a = in(reg) a, a_stride = in(reg) a_stride,
                w = in(reg) w, w_stride = in(reg) TILE_ROW_BYTES,
                c = in(reg) c, c_stride = in(reg) TILE_ROW_BYTES,
                options(nostack),
            )
        };
    }
    const _: () = assert!(DEPTH == 4, "multiply_tile names the tiles of four slots");
    match (SIGNED, slot) {
        (true, 0) => tile_op!("tdpbssd", "tmm0", "tmm1", "tmm2"),
        (true, 1) => tile_op!("tdpbssd", "tmm3", "tmm6", "tmm7"),
        (true, 2) => tile_op!("tdpbssd", "tmm4", "tmm1", "tmm2"),
        (true, _) => tile_op!("tdpbssd", "tmm5", "tmm6", "tmm7"),
        (false, 0) => tile_op!("tdpbsud", "tmm0", "tmm1", "tmm2"),
        (false, 1) => tile_op!("tdpbsud", "tmm3", "tmm6", "tmm7"),
        (false, 2) => tile_op!("tdpbsud", "tmm4", "tmm1", "tmm2"),
        (false, _) => tile_op!("tdpbsud", "tmm5", "tmm6", "tmm7"),
    }
}

/// A thread's buffers for [`pair_matmul`], kept across calls (no allocation once grown to the
/// largest matrix and batch): the unpacked pair, the ring of result tiles, the results.
pub struct Workspace {
    blocks: Vec<PairBlock>,
    dots: [Dots; DEPTH],
    results: Vec<[f32; ROWS]>,
}

impl Workspace {
    pub const fn new() -> Self {
        Self { blocks: Vec::new(), dots: [const { Dots([[0; ROWS]; TOKENS]) }; DEPTH], results: Vec::new() }
    }

    /// The last [`pair_matmul`]'s results, one row of 16 per activation row: the first `m`
    /// rows are that call's (the rest are padding or older).
    pub fn results(&self) -> &[[f32; ROWS]] {
        &self.results
    }
}

/// One block of an unpacked pair: the weight tile and the 16 rows' scales as f32.
#[repr(C, align(64))]
struct PairBlock {
    tile: WeightTile,
    d: [f32; ROWS],
    m: [f32; ROWS],
}

impl PairBlock {
    fn zeroed() -> Self {
        Self { tile: WeightTile([0; TILE_BYTES]), d: [0.0; ROWS], m: [0.0; ROWS] }
    }
}

/// One block's weights for 16 weight rows, as `tdpb*` reads them: 8 rows of 64 bytes.
#[repr(C, align(64))]
struct WeightTile([u8; TILE_BYTES]);

/// The result tile as stored: 16 activation rows of 16 i32, one cache line each.
#[repr(C, align(64))]
struct Dots([[i32; ROWS]; TOKENS]);
