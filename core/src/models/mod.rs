//! Model implementations. Generation models run one batched forward per engine step
//! over a list of [`SeqChunk`]s; embedding models map texts to vectors.

pub(crate) mod attention;
pub(crate) mod attention_split;
pub mod bert;
pub(crate) mod elementwise;
pub mod gemma3;
pub(crate) mod kv_write;
pub mod llama;
pub(crate) mod metadata;
pub(crate) mod micro_batch;
pub mod phi3;
pub mod qwen;
pub(crate) mod rope;
pub(crate) mod rows;
pub(crate) mod stacked;
pub(crate) mod step;
pub(crate) mod tensors;
pub(crate) mod vocabulary;
pub(crate) mod weights;

pub use vocabulary::LogitRows;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{KvPool, KvStorage};
use crate::threadpool::ThreadPool;

/// The slice of one sequence that a forward step processes.
///
/// `tokens` sit at positions `start_pos .. start_pos + tokens.len()`. Their K/V are written
/// into the paged cache through `block_table` (position `p` lives in block
/// `block_table[p / block_size]`, slot `p % block_size`), and attention reads positions
/// `0 .. start_pos + tokens.len()` through the same table. `block_table` must already cover
/// every position up to `start_pos + tokens.len()`.
///
/// When the KV storage has a sliding pool ([`KvStorage::has_sliding_pool`]), sliding-window
/// layers use `sliding_block_table` instead: the same indexing, but only the blocks from the
/// window of `start_pos` on must be valid (earlier ones may be given back,
/// [`crate::kv_cache::RELEASED_BLOCK`]). Without a sliding pool it is ignored (leave it empty).
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub block_table: &'a [u32],
    pub sliding_block_table: &'a [u32],
    /// Compute logits for the last token of this chunk (false for a non-final prefill chunk).
    pub want_logits: bool,
}

impl<'a> SeqChunk<'a> {
    /// The block table of `pool`.
    #[inline]
    pub fn table(&self, pool: KvPool) -> &'a [u32] {
        match pool {
            KvPool::Global => self.block_table,
            KvPool::Sliding => self.sliding_block_table,
        }
    }
}

/// A loaded generation model of one of the supported architectures, dispatched on
/// `general.architecture`.
#[derive(Debug)]
pub enum GenerationModel {
    Llama(llama::LlamaModel),
    Gemma3(gemma3::Gemma3Model),
    Qwen(qwen::QwenModel),
}

/// What the engine needs to know about a model's shape, whatever its architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// `general.name`, empty if absent.
    pub name: String,
    pub vocab_size: usize,
    /// The context window the model was trained for.
    pub context_length: usize,
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions a sliding-window layer attends to; `None` when no layer slides.
    pub sliding_window: Option<usize>,
    /// Layers that slide (0 when none does).
    pub n_sliding_layers: usize,
}

/// Every `general.architecture` [`GenerationModel::load`] runs, as its error lists them.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3", "phi3", "qwen2", "qwen3"];

impl GenerationModel {
    /// Loads the model of the file's architecture. Errors: an unsupported architecture (named,
    /// with the supported ones), and every load error of the architecture's own loader.
    pub fn load(gguf: &GgufFile, pool: Arc<ThreadPool>) -> Result<Self> {
        match gguf.require_str("general.architecture")? {
            "gemma3" => Ok(Self::Gemma3(gemma3::Gemma3Model::load(gguf, pool)?)),
            "qwen2" => Ok(Self::Qwen(qwen::QwenModel::load(gguf, qwen::QwenFamily::Qwen2, pool)?)),
            "qwen3" => Ok(Self::Qwen(qwen::QwenModel::load(gguf, qwen::QwenFamily::Qwen3, pool)?)),
            // The llama decoder also runs phi3 (see `llama::Family`).
            "llama" | "phi3" => Ok(Self::Llama(llama::LlamaModel::load(gguf, pool)?)),
            other => Err(load_error(
                gguf,
                format!("architecture `{other}` is not supported (supported: {SUPPORTED_ARCHITECTURES:?})"),
            )),
        }
    }

    pub fn shape(&self) -> ModelShape {
        // The configs are distinct types with these fields in common.
        macro_rules! shape_of {
            ($c:expr) => {
                ModelShape {
                    name: $c.name.clone(),
                    vocab_size: $c.vocab_size,
                    context_length: $c.context_length,
                    n_layers: $c.n_layers,
                    n_kv_heads: $c.n_kv_heads,
                    head_dim: $c.head_dim,
                    sliding_window: None,
                    n_sliding_layers: 0,
                }
            };
        }
        match self {
            Self::Llama(m) => shape_of!(m.config()),
            Self::Gemma3(m) => {
                let c = m.config();
                let n_sliding_layers = c.sliding_layers.iter().filter(|&&s| s).count();
                let sliding_window = c.sliding_window.filter(|_| n_sliding_layers > 0);
                ModelShape { sliding_window, n_sliding_layers, ..shape_of!(c) }
            }
            Self::Qwen(m) => shape_of!(m.config()),
        }
    }

    /// The thread pool the forward runs on (the engine also samples on it).
    pub(crate) fn pool(&self) -> &ThreadPool {
        match self {
            Self::Llama(m) => m.pool(),
            Self::Gemma3(m) => m.pool(),
            Self::Qwen(m) => m.pool(),
        }
    }

    /// Logits per row of [`Self::forward`]'s output (no allocation: the step loop calls it).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(m) => m.config().vocab_size,
            Self::Gemma3(m) => m.config().vocab_size,
            Self::Qwen(m) => m.config().vocab_size,
        }
    }

    /// A KV cache sized for this model: `num_blocks` blocks of `block_size` positions.
    pub fn new_kv_storage(&self, num_blocks: usize, block_size: usize) -> KvStorage {
        match self {
            Self::Llama(m) => m.new_kv_storage(num_blocks, block_size),
            Self::Gemma3(m) => m.new_kv_storage(num_blocks, block_size),
            Self::Qwen(m) => m.new_kv_storage(num_blocks, block_size),
        }
    }

    /// A KV cache with `num_blocks` blocks for global layers and `sliding_blocks` for
    /// sliding-window layers (see [`SeqChunk::sliding_block_table`]); one pool of
    /// `num_blocks`, as [`Self::new_kv_storage`], for a model without sliding layers.
    pub fn new_kv_storage_with_sliding_pool(
        &self,
        num_blocks: usize,
        sliding_blocks: usize,
        block_size: usize,
    ) -> KvStorage {
        match self {
            Self::Llama(m) => m.new_kv_storage(num_blocks, block_size),
            Self::Gemma3(m) => m.new_kv_storage_with_sliding_pool(num_blocks, sliding_blocks, block_size),
            Self::Qwen(m) => m.new_kv_storage(num_blocks, block_size),
        }
    }

    /// One batched step (see [`llama::LlamaModel::forward`] for the contract), in passes of
    /// at most [`micro_batch::MAX_ROWS`] rows.
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, logits: &mut Vec<f32>) -> Result<()> {
        self.forward_in_passes(chunks, kv, logits, micro_batch::MAX_ROWS)
    }

    /// [`Self::forward`] with the head's work per logit row chosen by the caller (see
    /// [`LogitRows`]): the engine's step.
    pub fn forward_rows(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, rows: &mut LogitRows) -> Result<()> {
        self.forward_rows_in_passes(chunks, kv, rows, micro_batch::MAX_ROWS)
    }

    /// [`Self::forward`] with passes of at most `max_rows` rows (tests try several: the logits
    /// must not change). A step that fits is one pass, with no copy.
    pub fn forward_in_passes(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        logits: &mut Vec<f32>,
        max_rows: usize,
    ) -> Result<()> {
        LogitRows::all_logits(logits, |rows| self.forward_rows_in_passes(chunks, kv, rows, max_rows))
    }

    /// [`Self::forward_rows`] with passes of at most `max_rows` rows: each pass gets the flags
    /// of its own logit rows, and the passes' results are concatenated in row order.
    pub fn forward_rows_in_passes(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvStorage,
        rows: &mut LogitRows,
        max_rows: usize,
    ) -> Result<()> {
        let n_rows: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        if n_rows <= max_rows {
            return self.forward_pass(chunks, kv, rows);
        }
        rows.logits.clear();
        rows.argmax.clear();
        let mut pass_rows = LogitRows::default();
        let mut first_logit_row = 0;
        for pass in micro_batch::passes(chunks, max_rows) {
            let logit_rows = first_logit_row..first_logit_row + pass.iter().filter(|c| c.want_logits).count();
            first_logit_row = logit_rows.end;
            pass_rows.argmax_only.clear();
            pass_rows.argmax_only.extend(logit_rows.map(|r| rows.argmax_only.get(r).copied().unwrap_or(false)));
            self.forward_pass(&pass, kv, &mut pass_rows)?;
            rows.logits.extend_from_slice(&pass_rows.logits);
            rows.argmax.extend_from_slice(&pass_rows.argmax);
        }
        Ok(())
    }

    fn forward_pass(&self, chunks: &[SeqChunk<'_>], kv: &mut KvStorage, rows: &mut LogitRows) -> Result<()> {
        match self {
            Self::Llama(m) => m.forward_rows(chunks, kv, rows),
            Self::Gemma3(m) => m.forward_rows(chunks, kv, rows),
            Self::Qwen(m) => m.forward_rows(chunks, kv, rows),
        }
    }
}

/// A load error naming the file.
pub(crate) fn load_error(gguf: &GgufFile, message: String) -> Error {
    Error::model_load(gguf.path(), message)
}

/// Checks a step's chunks against the model and its KV storage: token ids inside the
/// vocabulary (`InvalidRequest`), non-empty chunks, block tables that cover every position and
/// name existing blocks (`Internal`: the caller broke the [`SeqChunk`] contract).
pub(crate) fn check_chunks(
    chunks: &[SeqChunk<'_>],
    kv: &KvStorage,
    n_layers: usize,
    kv_dim: usize,
    vocab_size: usize,
) -> Result<()> {
    if kv.n_layers != n_layers || kv.kv_dim != kv_dim {
        return Err(Error::Internal(format!(
            "KV storage has {} layers × {} values, the model needs {n_layers} × {kv_dim}",
            kv.n_layers, kv.kv_dim
        )));
    }
    for (i, chunk) in chunks.iter().enumerate() {
        if chunk.tokens.is_empty() {
            return Err(Error::Internal(format!("chunk {i} has no tokens")));
        }
        if let Some(&bad) = chunk.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::invalid("prompt", format!("token id {bad} is outside the vocabulary of {vocab_size}")));
        }
        check_table(i, chunk, KvPool::Global, 0, kv)?;
    }
    Ok(())
}

/// Checks the sliding-window block tables of a step whose KV storage has a sliding pool:
/// each must cover the chunk with valid blocks from the window of its first position on.
pub(crate) fn check_sliding_tables(chunks: &[SeqChunk<'_>], kv: &KvStorage, window: usize) -> Result<()> {
    for (i, chunk) in chunks.iter().enumerate() {
        let first_block = (chunk.start_pos + 1).saturating_sub(window) / kv.block_size;
        check_table(i, chunk, KvPool::Sliding, first_block, kv)?;
    }
    Ok(())
}

/// Checks that chunk `i`'s table of `pool` covers every position it reaches, with blocks of
/// the pool from entry `first_block` on.
fn check_table(i: usize, chunk: &SeqChunk<'_>, pool: KvPool, first_block: usize, kv: &KvStorage) -> Result<()> {
    let end = chunk.start_pos + chunk.tokens.len();
    let blocks_needed = end.div_ceil(kv.block_size);
    let table = chunk.table(pool);
    let table = table.get(first_block.min(blocks_needed)..blocks_needed).ok_or_else(|| {
        Error::Internal(format!(
            "chunk {i} reaches position {end} but its {pool:?} block table covers {}",
            table.len() * kv.block_size
        ))
    })?;
    let num_blocks = kv.num_blocks(pool);
    if let Some(&bad) = table.iter().find(|&&b| b as usize >= num_blocks) {
        return Err(Error::Internal(format!("chunk {i} uses {pool:?} block {bad} of {num_blocks}")));
    }
    Ok(())
}
