//! SmolLM2-135M-Instruct requantized to Q4_K_M, Q5_K_M, Q6_K and Q8_0 (issue 16), held to
//! llama.cpp without running it: `tests/fixtures/smollm2_requant_llamacpp.json` (written by
//! `tests/reference/smollm2_requant_llamacpp.py` from the peer's `llama-quantize
//! --allow-requantize` and `llama-server`) records every tensor of llama-quantize's output and
//! llama.cpp's greedy output on each file.
//!
//! 1. Our requantizer (`cortexstream::quant::quantize`), run on the model cache's Q4_1 file,
//!    writes llama-quantize's file for every preset, byte for byte (sha256 of the whole file;
//!    on a difference, the per-tensor hashes say which tensors differ).
//! 2. Those files (cached in `$CORTEXSTREAM_CACHE/models/smollm2-requant/`, rebuilt when
//!    missing or when their hash is no longer llama-quantize's) run in our engine: prompt ids equal
//!    llama.cpp's, greedy ids equal until llama.cpp's top two are a near tie, teacher-forced
//!    log-probabilities close, and a sequence's output is the same alone and batched.
//!
//! One engine per file for the whole binary (run with `--test-threads=1`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::float64;
use common::llamacpp::{self, Reference};
use common::sha256::hex_digest;
use common::AllBlocksFreeAfter;
use cortexstream::gguf::GgufFile;
use cortexstream::quant::quantize::{requantize, Preset, Requantized};
use cortexstream::{Engine, EngineConfig};
use serde_json::Value;

const FIXTURE: &str = "smollm2_requant_llamacpp.json";

fn fixture() -> &'static Value {
    static FIXTURE_JSON: OnceLock<Value> = OnceLock::new();
    FIXTURE_JSON.get_or_init(|| common::fixture(FIXTURE))
}

fn preset_fixture(preset: Preset) -> &'static Value {
    let entry = &fixture()["presets"][preset.name()];
    assert!(entry.is_object(), "{FIXTURE} has no entry for {preset}");
    entry
}

/// llama-quantize's tensor, as the fixture records it.
struct Expected {
    ty: String,
    dims: Vec<usize>,
    sha256: String,
}

fn expected_tensors(preset: Preset) -> Vec<(String, Expected)> {
    preset_fixture(preset)["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| {
            let expected = Expected {
                ty: t["type"].as_str().expect("type").to_string(),
                dims: t["dims"].as_array().expect("dims").iter().map(|d| d.as_u64().expect("dim") as usize).collect(),
                sha256: t["sha256"].as_str().expect("sha256").to_string(),
            };
            (t["name"].as_str().expect("name").to_string(), expected)
        })
        .collect()
}

/// Every way `tensors` (name, ggml type name, dims, data) differ from llama-quantize's output
/// for `preset`, one line each; empty when they are the same tensor for tensor.
fn differences<'a>(
    preset: Preset,
    tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize], &'a [u8])>,
) -> Vec<String> {
    let expected = expected_tensors(preset);
    let mut ours: HashMap<&str, (&str, &[usize], &[u8])> = HashMap::new();
    let mut problems = Vec::new();
    let mut order = Vec::new();
    for (name, ty, dims, data) in tensors {
        order.push(name);
        ours.insert(name, (ty, dims, data));
    }
    let their_order: Vec<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    if order != their_order {
        problems.push(format!("tensor order differs: ours {order:?}, llama-quantize's {their_order:?}"));
    }
    for (name, e) in &expected {
        let Some(&(ty, dims, data)) = ours.get(name.as_str()) else {
            problems.push(format!("{name}: missing"));
            continue;
        };
        if ty != e.ty || dims != e.dims {
            problems.push(format!("{name}: {ty} {dims:?}, llama-quantize made {} {:?}", e.ty, e.dims));
        } else if hex_digest(data) != e.sha256 {
            problems.push(format!("{name} ({ty}): data differs from llama-quantize's"));
        }
    }
    problems
}

fn requantized_differences(preset: Preset, file: &Requantized) -> Vec<String> {
    differences(preset, file.tensors.iter().map(|t| (t.name.as_str(), t.ty.name(), &t.dims[..], &t.data[..])))
}

/// The hash the fixture comparisons rest on is SHA-256.
#[test]
fn sha256_matches_the_standard_test_vectors() {
    assert_eq!(hex_digest(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(hex_digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        hex_digest(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    assert_eq!(hex_digest(&vec![b'a'; 1_000_000]), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

fn source() -> &'static GgufFile {
    static SOURCE: OnceLock<GgufFile> = OnceLock::new();
    SOURCE.get_or_init(|| GgufFile::open(common::smollm2_path()).expect("the SmolLM2 Q4_1 file opens"))
}

/// llama-quantize's whole output file for `preset` (sha256).
fn expected_file_sha256(preset: Preset) -> &'static str {
    preset_fixture(preset)["file_sha256"].as_str().expect("file_sha256")
}

/// Panics unless `ours` is llama-quantize's file for `preset` byte for byte, listing the tensors
/// that differ (or saying that only the metadata or layout does).
fn assert_is_llama_quantize_file(preset: Preset, ours: &Requantized) {
    if hex_digest(&ours.to_bytes()) == expected_file_sha256(preset) {
        return;
    }
    let problems = requantized_differences(preset, ours);
    assert!(problems.is_empty(), "{preset}: {} tensors differ:\n{}", problems.len(), problems.join("\n"));
    panic!("{preset}: every tensor equals llama-quantize's, but the file does not (metadata or layout)");
}

/// Our requantizer run on the cache's Q4_1 writes llama-quantize's file, to the byte.
#[test]
fn our_requantizer_writes_llama_quantizes_file_byte_for_byte_for_every_preset() {
    for preset in Preset::ALL {
        let ours = requantize(source(), preset).unwrap_or_else(|e| panic!("{preset}: {e}"));
        assert_is_llama_quantize_file(preset, &ours);
    }
}

/// Where the requantized file for `preset` is cached.
fn cached_path(preset: Preset) -> PathBuf {
    common::models_dir().join("smollm2-requant").join(format!("SmolLM2-135M-Instruct.{}.gguf", preset.name()))
}

/// The requantized file for `preset`: the cached one when it is still llama-quantize's file,
/// else rebuilt by our requantizer (and checked before it is written).
fn requantized_file(preset: Preset) -> PathBuf {
    let path = cached_path(preset);
    let is_llama_quantizes =
        |path: &PathBuf| std::fs::read(path).is_ok_and(|bytes| hex_digest(&bytes) == expected_file_sha256(preset));
    if is_llama_quantizes(&path) {
        return path;
    }
    let ours = requantize(source(), preset).unwrap_or_else(|e| panic!("{preset}: {e}"));
    assert_is_llama_quantize_file(preset, &ours);
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("the cache directory is writable");
    ours.write(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(is_llama_quantizes(&path), "{preset}: the written file {} is not what was checked", path.display());
    path
}

fn engine(preset: Preset) -> &'static Engine {
    static ENGINES: OnceLock<HashMap<Preset, OnceLock<Engine>>> = OnceLock::new();
    let engines = ENGINES.get_or_init(|| Preset::ALL.into_iter().map(|p| (p, OnceLock::new())).collect());
    engines[&preset].get_or_init(|| {
        let mut config = EngineConfig::new(requantized_file(preset));
        config.kv_cache_tokens = 4096;
        // A fixed step budget: the batching check counts steps, and an adaptive budget measured on
        // a loaded machine would shrink the prompt chunks and spread the streams over more steps.
        config.target_step_ms = None;
        let engine = Engine::new(config).unwrap_or_else(|e| panic!("{preset}: the requantized file loads: {e}"));
        assert_eq!(engine.model_info().architecture, "llama");
        engine
    })
}

fn references(preset: Preset) -> Vec<Reference> {
    llamacpp::references(preset_fixture(preset))
}

/// How far our log-probability of llama.cpp's token may be from llama.cpp's own, teacher-forced.
/// Both engines quantize activations to 8 bits, each its own way; measured on these files: at
/// most 0.39 everywhere but one sensitive position (Q5_K_M, "1, 2, 3, ..." position 1: 0.58,
/// with a float64 forward on the same weights between the two engines; see the generator's
/// `NEAR_TIE`). Looser than Gemma 3's 0.4 for that position, not for a whole class of them.
const LOGPROB_TOLERANCE: f32 = 0.65;

/// Positions compared per prompt teacher-forced (each is one prefill of a 135M model).
const TEACHER_FORCED_POSITIONS: usize = 16;

/// The four checks against llama.cpp on one preset's file (teacher-forced first: where free
/// runs part, its message says more).
fn check_against_llama_cpp(preset: Preset) {
    let engine = AllBlocksFreeAfter(engine(preset));
    let references = references(preset);
    llamacpp::assert_tokenization_matches(&engine, &references, &fixture()["tokenize"]);
    let largest = llamacpp::assert_teacher_forced_logprobs_match(
        &engine,
        &references,
        TEACHER_FORCED_POSITIONS,
        LOGPROB_TOLERANCE,
    );
    eprintln!("{preset}: largest |ours - llama.cpp| teacher-forced logprob difference {largest:.4}");
    llamacpp::assert_greedy_matches_until_near_tie(&engine, &references);
    llamacpp::assert_greedy_same_alone_and_beside_eight_others(&engine, "The capital of France is");
}

#[test]
fn q4_k_m_file_agrees_with_llama_cpp() {
    check_against_llama_cpp(Preset::Q4KM);
}

#[test]
fn q5_k_m_file_agrees_with_llama_cpp() {
    check_against_llama_cpp(Preset::Q5KM);
}

#[test]
fn q6_k_file_agrees_with_llama_cpp() {
    check_against_llama_cpp(Preset::Q6K);
}

#[test]
fn q8_0_file_agrees_with_llama_cpp() {
    check_against_llama_cpp(Preset::Q8_0);
}

/// Per preset, bounds on `|our logprob - float64 logprob|` over the float64 top-5 ids of each
/// prompt's positions (`tests/fixtures/smollm2_requant_f64.json`): `(mean, max)` per prompt,
/// each the largest we measured over the five prompts plus about 15% (measured with the tiled
/// attention: mean 0.118, 0.109, 0.097, 0.100; max 0.519, 0.479, 0.434, 0.543 for Q4_K_M, Q5_K_M,
/// Q6_K, Q8_0; before it: mean 0.103, 0.108, 0.100, 0.095; max 0.517, 0.546, 0.451, 0.547. The
/// attention is within 2e-6 of a float64 attention, so the shift is which activations round
/// differently to 8 bits; the lower-ranked ids of the top 5 carry the larger errors, as on
/// Gemma 3). Only our own 8-bit activation rounding separates us from float64, so these are far
/// tighter than the llama.cpp comparison. A change that moves them (e.g. a more exact kernel)
/// should re-measure them, not widen them.
const FLOAT64_ERROR_BOUNDS: [(Preset, (f32, f32)); 4] = [
    (Preset::Q4KM, (0.136, 0.60)),
    (Preset::Q5KM, (0.125, 0.55)),
    (Preset::Q6K, (0.112, 0.50)),
    (Preset::Q8_0, (0.115, 0.625)),
];

/// Positions per preset in the fixture (five prompts, up to 16 each): the test must really look.
const FLOAT64_MIN_POSITIONS: usize = 5 * 12;

fn check_against_float64(preset: Preset) {
    let engine = AllBlocksFreeAfter(engine(preset));
    let (_, (mean_bound, max_bound)) = FLOAT64_ERROR_BOUNDS.into_iter().find(|(p, _)| *p == preset).expect("bounds");
    let fixture = common::fixture("smollm2_requant_f64.json");
    let mut positions = 0;
    for r in float64::references(&fixture["presets"][preset.name()]) {
        let errors = float64::errors(&engine, &r, 2.0 * max_bound);
        assert!(errors.mean <= mean_bound, "{preset} {}: mean above {mean_bound}", errors.summary);
        assert!(errors.max <= max_bound, "{preset} {}: max above {max_bound}", errors.summary);
        positions += errors.positions;
    }
    assert!(positions >= FLOAT64_MIN_POSITIONS, "{preset}: only {positions} positions checked against float64");
}

#[test]
fn q4_k_m_file_follows_float64_closely() {
    check_against_float64(Preset::Q4KM);
}

#[test]
fn q5_k_m_file_follows_float64_closely() {
    check_against_float64(Preset::Q5KM);
}

#[test]
fn q6_k_file_follows_float64_closely() {
    check_against_float64(Preset::Q6K);
}

#[test]
fn q8_0_file_follows_float64_closely() {
    check_against_float64(Preset::Q8_0);
}
