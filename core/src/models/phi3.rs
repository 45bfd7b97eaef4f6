//! Phi-3 (llama.cpp's "PHI3" architecture), run by the llama decoder
//! ([`crate::models::llama::LlamaModel`]): the same RMS norms, grouped-query attention and SwiGLU
//! FFN, with these differences, each read from the GGUF:
//! - fused projections: `attn_qkv` holds `[q | k | v]` and `ffn_up` holds `[gate | up]`
//!   (Phi-3's `qkv_proj` and `gate_up_proj`, which the converter keeps whole);
//! - RoPE in NEOX order (pairs `(x[i], x[i + head_dim/2])`);
//! - `phi3.attention.sliding_window` (Phi-3 mini's configs say 2047), honoured on every layer as
//!   `transformers` does. llama.cpp currently ignores it ("Phi SWA is currently disabled"), so the
//!   two agree on sequences up to the window and part beyond it.
//!
//! - LongRoPE (Phi-3 128k, Phi-3.5: `rope_factors_short` / `rope_factors_long` and
//!   `rope.scaling.attn_factor`): the short factors and the attention factor are honoured and the
//!   context is capped at `rope.scaling.original_context_length` (4096 for those models), as
//!   llama.cpp runs them with a context up to that length; longer contexts are not supported.
//!
//! Refused at load, naming what: partial rotary (`rope.dimension_count` below the head size, as
//! in Phi-4-mini), YaRN, and every other key or tensor the llama decoder refuses.

use crate::models::llama::{Family, Projections, RopeStyle};

/// The Phi-3 family of the llama decoder.
pub const PHI3: Family =
    Family { architecture: "phi3", rope: RopeStyle::Neox, sliding_window: true, projections: Projections::Fused };
