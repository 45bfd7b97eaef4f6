//! The requantizer's rules and refusals on small synthetic inputs. Its byte identity with
//! llama-quantize on a real model is `core/tests/smollm2_requant.rs`.

use super::preset::{llama_cpp_order, Planner, TensorShape};
use super::*;
use crate::gguf_write::{to_bytes, TensorToWrite};
use crate::quant::QMatrix;

fn shape<'a>(name: &'a str, dims: &'a [usize]) -> TensorShape<'a> {
    TensorShape { name, dims, ty: GgmlType::Q4_1 }
}

/// The types of a 30-layer model's attn_v and ffn_down under `preset`, layer by layer.
fn per_layer_types(preset: Preset, row: usize) -> Vec<(GgmlType, GgmlType)> {
    let names: Vec<_> =
        (0..30).map(|i| [format!("blk.{i}.attn_v.weight"), format!("blk.{i}.ffn_down.weight")]).collect();
    let dims = [row, 64];
    let shapes: Vec<_> = names.iter().flatten().map(|n| shape(n, &dims)).collect();
    let mut planner = Planner::new(preset, &shapes, 30);
    shapes.chunks(2).map(|pair| (planner.target_type(&pair[0]), planner.target_type(&pair[1]))).collect()
}

#[test]
fn k_mixes_give_more_bits_to_the_first_and_last_eighth_and_every_third_layer_between() {
    // llama.cpp's use_more_bits for 30 layers: 0..3, 26..30, and 5, 8, ..., 23.
    let more: Vec<usize> = (0..30).filter(|&i| !(3..26).contains(&i) || (i - 3) % 3 == 2).collect();
    for (preset, base) in [(Preset::Q4KM, GgmlType::Q4K), (Preset::Q5KM, GgmlType::Q5K)] {
        for (layer, (v, down)) in per_layer_types(preset, 512).into_iter().enumerate() {
            let expected = if more.contains(&layer) { GgmlType::Q6K } else { base };
            assert_eq!((v, down), (expected, expected), "{preset} layer {layer}");
        }
    }
    for (layer, types) in per_layer_types(Preset::Q6K, 512).into_iter().enumerate() {
        assert_eq!(types, (GgmlType::Q6K, GgmlType::Q6K), "Q6_K layer {layer}");
    }
}

#[test]
fn rows_that_are_not_a_multiple_of_256_fall_back_to_32_blocks_and_then_to_f16() {
    let fallbacks = [(Preset::Q4KM, GgmlType::Q5_0), (Preset::Q5KM, GgmlType::Q5_1), (Preset::Q6K, GgmlType::Q8_0)];
    for (preset, fallback) in fallbacks {
        let dims = [576, 64];
        let q = shape("blk.3.attn_q.weight", &dims);
        assert_eq!(Planner::new(preset, &[], 30).target_type(&q), fallback, "{preset}");
        let odd = [100, 64];
        let q = shape("blk.3.attn_q.weight", &odd);
        assert_eq!(Planner::new(preset, &[], 30).target_type(&q), GgmlType::F16, "{preset}");
    }
}

#[test]
fn a_tied_embedding_is_quantized_like_the_output_head() {
    let dims = [512, 1000];
    let embedding = shape("token_embd.weight", &dims);
    let output = shape("output.weight", &dims);
    // Tied (no output.weight): the embedding is the head and gets Q6_K in a K-mix.
    assert_eq!(
        Planner::new(Preset::Q4KM, &[shape("token_embd.weight", &dims)], 30).target_type(&embedding),
        GgmlType::Q6K
    );
    // Untied: the embedding takes the preset's type, the head Q6_K.
    let both = [shape("token_embd.weight", &dims), shape("output.weight", &dims)];
    let mut planner = Planner::new(Preset::Q4KM, &both, 30);
    assert_eq!(planner.target_type(&embedding), GgmlType::Q4K);
    assert_eq!(planner.target_type(&output), GgmlType::Q6K);
    // Q8_0 keeps Q8_0 for the head; a row that fits no K block makes it Q8_0 too.
    assert_eq!(Planner::new(Preset::Q8_0, &both, 30).target_type(&output), GgmlType::Q8_0);
    let narrow = [576, 1000];
    assert_eq!(Planner::new(Preset::Q5KM, &[], 30).target_type(&shape("output.weight", &narrow)), GgmlType::Q8_0);
}

#[test]
fn norms_and_vectors_keep_their_type() {
    let dims = [576];
    let norm = TensorShape { name: "blk.0.attn_norm.weight", dims: &dims, ty: GgmlType::F32 };
    assert_eq!(Planner::new(Preset::Q4KM, &[], 30).target_type(&norm), GgmlType::F32);
}

#[test]
fn tensors_are_ordered_as_llama_cpp_writes_them() {
    let mut names = [
        "blk.10.attn_q.weight",
        "token_embd.weight",
        "blk.2.ffn_up.weight",
        "blk.2.attn_k.weight",
        "output_norm.weight",
    ];
    names.sort_by(|a, b| llama_cpp_order(a, b));
    assert_eq!(
        names,
        [
            "output_norm.weight",
            "token_embd.weight",
            "blk.2.attn_k.weight",
            "blk.2.ffn_up.weight",
            "blk.10.attn_q.weight"
        ]
    );
}

/// Deterministic values, per 256: ordinary, all zero, large, with outliers, then ordinary again.
fn sample_values(count: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..count)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            match i / 256 {
                1 => 0.0,
                // Not tiny: the K types' f16 super-scales go subnormal (and coarse) below ~1e-2.
                2 => unit * 3.0,
                3 if i % 97 == 0 => unit * 8.0,
                _ => unit * 0.1,
            }
        })
        .collect()
}

/// What we write, the engine's own loader reads back as values close to the input (within each
/// type's rounding, relative to the largest magnitude of the 256 values around: K types scale
/// their sub-blocks against the super-block's largest): the block layouts agree
/// with the decoders, themselves checked against gguf-py's dequantizers. A layout mistake (a
/// nibble or a scale in the wrong place) gives errors the size of the values themselves.
#[test]
fn quantized_blocks_read_back_through_the_engines_decoders() {
    const SUPER: usize = 256;
    let (rows, cols) = (8, 5 * SUPER);
    let values = sample_values(rows * cols);
    let types = [
        (GgmlType::Q8_0, 0.01),
        // Symmetric around the largest-magnitude value: its opposite extreme clips to code 31.
        (GgmlType::Q5_0, 0.07),
        (GgmlType::Q5_1, 0.05),
        // The K types round sub-block scales and mins to 6 bits of the super-block's largest.
        (GgmlType::Q4K, 0.15),
        (GgmlType::Q5K, 0.08),
        (GgmlType::Q6K, 0.05),
        (GgmlType::F16, 0.001),
    ];
    for (ty, relative) in types {
        let bytes = quantize(ty, &values).expect("a quantizer for the type");
        let matrix = QMatrix::from_ggml_bytes(ty, rows, cols, &bytes).unwrap_or_else(|e| panic!("{ty}: {e}"));
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            matrix.dequantize_row(r, &mut row);
            let want = &values[r * cols..][..cols];
            for (block, (got, want)) in row.chunks(SUPER).zip(want.chunks(SUPER)).enumerate() {
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= relative * scale + 1e-6, "{ty} row {r} super-block {block}: {g} for {w}");
                }
            }
        }
    }
}

fn tiny_model(architecture: &str, embedding_type: GgmlType, embedding: &[u8]) -> GgufFile {
    let metadata = vec![
        ("general.architecture".to_string(), Value::String(architecture.into())),
        (format!("{architecture}.block_count"), Value::U32(1)),
    ];
    let tensors = [TensorToWrite { name: "token_embd.weight", dims: &[256, 1], ty: embedding_type, data: embedding }];
    GgufFile::from_bytes("tiny.gguf", to_bytes(&metadata, &tensors)).expect("a valid file")
}

#[test]
fn other_architectures_are_refused_by_name() {
    let data = quantize(GgmlType::Q8_0, &sample_values(256)).unwrap();
    let error = requantize(&tiny_model("gemma3", GgmlType::Q8_0, &data), Preset::Q4KM).unwrap_err();
    assert!(matches!(error, RequantizeError::UnsupportedModel { .. }), "{error}");
    assert!(error.to_string().contains("architecture `gemma3`"), "{error}");
}

#[test]
fn a_source_type_it_cannot_read_is_named_with_its_tensor() {
    let data = quantize(GgmlType::Q4K, &sample_values(256)).unwrap();
    // The tied embedding of a Q8_0 file must become Q8_0, so the Q4_K source has to be read.
    let error = requantize(&tiny_model("llama", GgmlType::Q4K, &data), Preset::Q8_0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot requantize tensor `token_embd.weight`: reading Q4_K tensors is not supported"
    );
}

#[test]
fn a_tensor_already_in_its_target_type_is_copied_untouched() {
    // Q8_0 bytes no quantizer would produce (scale 1.0, codes 0..32): requantizing would change them.
    let mut block = crate::f16::f32_to_f16(1.0).to_le_bytes().to_vec();
    block.extend(0u8..32);
    let data: Vec<u8> = block.iter().copied().cycle().take(34 * 8).collect();
    let out = requantize(&tiny_model("llama", GgmlType::Q8_0, &data), Preset::Q8_0).unwrap();
    assert_eq!(out.tensors[0].ty, GgmlType::Q8_0);
    assert_eq!(out.tensors[0].data, data);
}
