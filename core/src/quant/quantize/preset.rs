//! Which ggml type each tensor gets under a llama-quantize preset: llama.cpp's
//! `llama_tensor_get_type` rules as they apply to a dense `llama` model for the four presets
//! here (no importance matrix, no overrides), including its fallbacks for rows that are not a
//! multiple of a type's block.

use crate::gguf::GgmlType;

/// A llama-quantize file type (`llama-quantize IN OUT <preset>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    Q4KM,
    Q5KM,
    Q6K,
    Q8_0,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Q4KM, Preset::Q5KM, Preset::Q6K, Preset::Q8_0];

    /// The name llama-quantize takes and prints (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Q4KM => "Q4_K_M",
            Preset::Q5KM => "Q5_K_M",
            Preset::Q6K => "Q6_K",
            Preset::Q8_0 => "Q8_0",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// llama.cpp's `llama_ftype` value, written as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            Preset::Q4KM => 15,
            Preset::Q5KM => 17,
            Preset::Q6K => 18,
            Preset::Q8_0 => 7,
        }
    }

    /// The type of every quantizable tensor no rule singles out.
    fn default_type(self) -> GgmlType {
        match self {
            Preset::Q4KM => GgmlType::Q4K,
            Preset::Q5KM => GgmlType::Q5K,
            Preset::Q6K => GgmlType::Q6K,
            Preset::Q8_0 => GgmlType::Q8_0,
        }
    }

    fn is_k_mix(self) -> bool {
        matches!(self, Preset::Q4KM | Preset::Q5KM)
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a tensor is, for the rules (llama.cpp's `tensor_category`, the ones that matter here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Output,
    TokenEmbedding,
    /// attn_qkv, attn_kv_b or attn_v: llama.cpp's "attention-v-like" tensors, which share
    /// one rule and one counter (its separate attn_qkv rule is never reached for them).
    AttentionV,
    FfnDown,
    Other,
}

fn role(name: &str) -> Role {
    // The order of llama.cpp's `tensor_get_category` (the first substring that matches wins).
    if name == "output.weight" {
        Role::Output
    } else if name == "token_embd.weight" {
        Role::TokenEmbedding
    } else if ["attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"].iter().any(|s| name.contains(s)) {
        Role::AttentionV
    } else if ["attn_k.weight", "attn_q.weight", "attn_output.weight", "ffn_up", "ffn_gate"]
        .iter()
        .any(|s| name.contains(s))
    {
        Role::Other
    } else if name.contains("ffn_down") {
        Role::FfnDown
    } else {
        Role::Other
    }
}

/// One tensor as the planner sees it.
pub struct TensorShape<'a> {
    pub name: &'a str,
    pub dims: &'a [usize],
    pub ty: GgmlType,
}

/// Whether llama-quantize quantizes the tensor at all (matrices named `*weight`, not norms,
/// not MoE router weights); the others are copied as they are.
fn is_quantizable(t: &TensorShape) -> bool {
    t.dims.len() >= 2
        && t.name.ends_with("weight")
        && !t.name.contains("_norm.weight")
        && !t.name.contains("ffn_gate_inp.weight")
}

/// llama.cpp's choice of more bits for some layers: the first and last eighth, and every
/// third one between.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    let (layer, layers) = (layer as i64, layers as i64);
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// The per-file state llama.cpp's rules read: counters of attention-v and ffn_down tensors seen
/// so far (tensors are visited in [`llama_cpp_order`]).
pub struct Planner {
    preset: Preset,
    tied_embeddings: bool,
    attention_v_total: usize,
    attention_v_seen: usize,
    layers: usize,
    ffn_down_seen: usize,
}

impl Planner {
    pub fn new(preset: Preset, tensors: &[TensorShape], layers: usize) -> Self {
        Self {
            preset,
            tied_embeddings: !tensors.iter().any(|t| role(t.name) == Role::Output),
            attention_v_total: tensors.iter().filter(|t| role(t.name) == Role::AttentionV).count(),
            attention_v_seen: 0,
            layers,
            ffn_down_seen: 0,
        }
    }

    /// The type tensor `t` gets; call once per tensor in [`llama_cpp_order`].
    pub fn target_type(&mut self, t: &TensorShape) -> GgmlType {
        if !is_quantizable(t) {
            return t.ty;
        }
        let chosen = self.rule_type(t);
        fall_back_for_row_length(chosen, t.dims[0])
    }

    fn rule_type(&mut self, t: &TensorShape) -> GgmlType {
        let (preset, default) = (self.preset, self.preset.default_type());
        match role(t.name) {
            Role::Output | Role::TokenEmbedding if role(t.name) == Role::Output || self.tied_embeddings => {
                // The output head (or the embedding it is tied to): Q8_0 when the row does not
                // fit the preset's block, else Q6_K unless the preset is Q8_0.
                if !t.dims[0].is_multiple_of(default.block_layout().0) || default == GgmlType::Q8_0 {
                    GgmlType::Q8_0
                } else {
                    GgmlType::Q6K
                }
            }
            Role::AttentionV => {
                let more_bits = use_more_bits(self.attention_v_seen, self.attention_v_total);
                self.attention_v_seen += 1;
                if preset.is_k_mix() && more_bits {
                    GgmlType::Q6K
                } else {
                    default
                }
            }
            Role::FfnDown => {
                let more_bits = use_more_bits(self.ffn_down_seen, self.layers);
                self.ffn_down_seen += 1;
                if preset.is_k_mix() && more_bits {
                    GgmlType::Q6K
                } else {
                    default
                }
            }
            _ => default,
        }
    }
}

/// llama.cpp's `tensor_type_fallback`: a 256-block type on rows that are not a multiple of 256
/// becomes a 32-block type of about as many bits; F16 when even 32 does not divide the row.
fn fall_back_for_row_length(ty: GgmlType, row: usize) -> GgmlType {
    if row.is_multiple_of(ty.block_layout().0) {
        return ty;
    }
    let smaller = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if row.is_multiple_of(smaller.block_layout().0) {
        smaller
    } else {
        GgmlType::F16
    }
}

/// The order llama-quantize visits and writes tensors: those outside any layer first, then
/// layer by layer (numerically), by name within each group.
pub fn llama_cpp_order(a: &str, b: &str) -> std::cmp::Ordering {
    layer_of(a).cmp(&layer_of(b)).then_with(|| a.cmp(b))
}

/// `blk.N.` → `Some(N)`; any other name sorts before every layer (`None < Some`).
fn layer_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("blk.")?;
    let digits = rest.split('.').next()?;
    digits.parse().ok()
}
