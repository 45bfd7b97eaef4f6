//! Sentence embeddings with the real all-MiniLM-L6-v2, checked against an independent float64
//! numpy implementation (`tests/reference/bert_f64.py`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use cortexstream::models::bert::BertEmbedder;
use cortexstream::threadpool::{default_thread_count, ThreadPool};
use cortexstream::{Engine, EngineConfig, Error, Event, Request, SamplingParams};

const LONG_TEXT: &str = "The history of the city goes back more than two thousand years, to a small settlement \
    of fishermen and traders on the northern bank of the river. Over the centuries it grew into a busy port, \
    survived floods, fires and a long siege, and became known for its markets, its bridges and its university. \
    Today most visitors come for the old town, where narrow streets wind between merchant houses, churches and \
    small squares, and for the museums that tell the story of the river trade, the shipyards and the people who \
    worked in them, from the medieval guilds to the dock workers of the industrial age.";

fn embedder() -> &'static BertEmbedder {
    static EMBEDDER: OnceLock<BertEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let pool = Arc::new(ThreadPool::new(default_thread_count()).expect("start the thread pool"));
        let start = Instant::now();
        let embedder = BertEmbedder::load(&common::minilm_dir(), pool).expect("the MiniLM folder loads");
        println!("loaded {} in {:.1} ms", embedder.name(), start.elapsed().as_secs_f64() * 1e3);
        embedder
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn embed_one(text: &str) -> Vec<f32> {
    embedder().embed(&[text]).expect("embedding succeeds").remove(0)
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tolerance, "{what}: largest difference {worst}");
}

#[test]
fn describes_the_model() {
    let embedder = embedder();
    assert_eq!(embedder.dim(), 384);
    // min(max_seq_length 256 from sentence_bert_config.json, max_position_embeddings 512)
    assert_eq!(embedder.max_tokens(), 256);
    assert_eq!(embedder.name(), "minilm");
    // [CLS] a man is eating food . [SEP]
    assert_eq!(embedder.count_tokens("A man is eating food.").unwrap(), 8);
}

#[test]
fn vectors_have_the_model_width_and_unit_length() {
    let texts = ["A man is eating food.", "x", "Ünïcödé and emoji 🚀 survive tokenisation.", LONG_TEXT];
    let vectors = embedder().embed(&texts).unwrap();
    assert_eq!(vectors.len(), texts.len());
    for (text, vector) in texts.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        let norm = vector.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() <= 1e-5, "{text:?}: norm {norm}");
    }
}

#[test]
fn related_sentences_are_closer_than_unrelated_ones() {
    let triples = [
        (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            ["The girl is carrying a baby.", "A cheetah is running behind its prey."],
        ),
        (
            "A man is playing the guitar.",
            "Someone plays an instrument on stage.",
            ["A woman is slicing onions.", "The stock market fell sharply today."],
        ),
    ];
    for (anchor, related, unrelated) in triples {
        let vectors = embedder().embed(&[anchor, related, unrelated[0], unrelated[1]]).unwrap();
        let related_score = cosine(&vectors[0], &vectors[1]);
        for (text, vector) in unrelated.iter().zip(&vectors[2..]) {
            let score = cosine(&vectors[0], vector);
            assert!(related_score > score, "{anchor:?}: {related:?} scores {related_score:.4}, {text:?} {score:.4}");
        }
    }
}

#[test]
fn a_text_embeds_the_same_alone_and_beside_longer_texts() {
    let short = "A man is eating food.";
    let alone = embed_one(short);
    let batch =
        embedder().embed(&[LONG_TEXT, short, "A slightly longer sentence about something else entirely."]).unwrap();
    assert_close(&alone, &batch[1], 1e-5, "short text inside a batch");
    assert_close(&embed_one(LONG_TEXT), &batch[0], 1e-5, "long text inside a batch");
}

#[test]
fn sixty_four_sentences_come_back_in_order_and_match_single_embeddings() {
    let subjects =
        ["A man", "The girl", "A cheetah", "My neighbour", "The old dog", "A robot", "Two children", "The chef"];
    let actions = [
        "is eating food.",
        "is running in the park.",
        "reads a book.",
        "plays the guitar.",
        "is sleeping.",
        "cooks dinner.",
        "waits for the bus.",
        "paints a fence.",
    ];
    let sentences: Vec<String> =
        subjects.iter().flat_map(|s| actions.iter().map(move |a| format!("{s} {a}"))).collect();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    assert_eq!(texts.len(), 64);

    embedder().embed(&texts).unwrap(); // warm up
    let start = Instant::now();
    let vectors = embedder().embed(&texts).unwrap();
    let elapsed = start.elapsed();
    let tokens: usize = texts.iter().map(|t| embedder().count_tokens(t).unwrap()).sum();
    println!(
        "embedded 64 short sentences ({tokens} tokens) in {:.1} ms ({:.0} tokens/s)",
        elapsed.as_secs_f64() * 1e3,
        tokens as f64 / elapsed.as_secs_f64()
    );

    assert_eq!(vectors.len(), 64);
    // Spans both internal sub-batches.
    for i in [0, 31, 32, 63] {
        assert_close(&embed_one(texts[i]), &vectors[i], 1e-5, texts[i]);
    }
}

#[test]
fn matches_the_float64_reference() {
    let texts = [
        "A man is eating food.",
        "The girl is carrying a baby.",
        "What's the capital of France? Paris, obviously!",
        "naïve café — “quotes”, 数字 and 1234567.89",
        LONG_TEXT,
    ];
    let long_tokens = embedder().count_tokens(LONG_TEXT).unwrap();
    assert!(long_tokens > 100 && long_tokens <= 256, "the long text has {long_tokens} tokens");

    let reference = float64_reference(&texts);
    let vectors = embedder().embed(&texts).unwrap();
    assert_eq!(reference.len(), texts.len());
    for ((text, got), want) in texts.iter().zip(&vectors).zip(&reference) {
        let similarity = cosine(got, want);
        println!("1 - cosine to the float64 reference: {:.1e} for {text:?}", 1.0 - similarity);
        assert!(similarity >= 0.9999, "{text:?}: cosine {similarity}");
    }
}

/// Runs `tests/reference/bert_f64.py` on `texts`.
fn float64_reference(texts: &[&str]) -> Vec<Vec<f32>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/bert_f64.py");
    let mut child = Command::new(common::python())
        .arg(&script)
        .arg(common::minilm_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    let input = serde_json::to_vec(texts).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{} failed", script.display());
    serde_json::from_slice(&output.stdout).expect("the reference prints a JSON list of vectors")
}

fn expect_invalid_input(result: cortexstream::Result<Vec<Vec<f32>>>) -> String {
    match result {
        Err(Error::InvalidRequest { param: "input", message }) => message,
        other => panic!("expected an invalid `input` error, got {other:?}"),
    }
}

#[test]
fn rejects_empty_and_too_long_input() {
    let embedder = embedder();
    expect_invalid_input(embedder.embed(&[]));

    let message = expect_invalid_input(embedder.embed(&["fine", ""]));
    assert!(message.contains("input[1]"), "{message}");

    let too_long = LONG_TEXT.repeat(3);
    let count = embedder.count_tokens(&too_long).unwrap();
    assert!(count > 256);
    let message = expect_invalid_input(embedder.embed(&["fine", &too_long]));
    assert!(message.contains(&count.to_string()) && message.contains("256"), "{message}");
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let source = common::minilm_dir();
    let dir = std::env::temp_dir().join(format!("cortexstream-bert-load-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let pool = Arc::new(ThreadPool::new(1).expect("start the thread pool"));
    let load_error = |expected_file: &str| match BertEmbedder::load(&dir, Arc::clone(&pool)) {
        Err(Error::ModelLoad { path, message }) => {
            assert!(path.ends_with(expected_file), "{} should name {expected_file}", path.display());
            message
        }
        other => panic!("expected a load error naming {expected_file}, got {other:?}"),
    };

    std::fs::write(dir.join("1_Pooling/config.json"), r#"{"pooling_mode_cls_token": true}"#).unwrap();
    assert!(load_error("1_Pooling/config.json").contains("mean pooling"));

    std::fs::copy(source.join("1_Pooling/config.json"), dir.join("1_Pooling/config.json")).unwrap();
    assert!(load_error("model.safetensors").contains("cannot read"));

    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    assert!(load_error("model.safetensors").contains("not a valid safetensors file"));

    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bit patterns of embedding vectors: "bit for bit" equality, with no float tolerance.
fn bits(vectors: &[Vec<f32>]) -> Vec<Vec<u32>> {
    vectors.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
}

/// One embed call made while a generation streams on the engine thread.
struct Overlap {
    vectors: Vec<Vec<f32>>,
    /// Tokens the generation had streamed when the call started and when it returned.
    tokens_at_start: usize,
    tokens_at_end: usize,
    generation_finished_at_end: bool,
}

#[test]
fn embeddings_run_beside_generation() {
    let mut config = EngineConfig::new(common::smollm2_path());
    config.embedding_model = Some(common::minilm_dir());
    config.kv_cache_tokens = 2048;
    let engine = Engine::new(config).expect("SmolLM2 and MiniLM load");
    let texts = [LONG_TEXT, "A man is eating food.", "The girl is carrying a baby.", LONG_TEXT];
    let request = || {
        let params = SamplingParams { max_tokens: Some(200), ignore_eos: true, ..SamplingParams::greedy() };
        Request::new("Once upon a time, in a small village by the sea,", params)
    };
    // Each alone first: the references.
    let solo_vectors = engine.embed(&texts).unwrap().vectors;
    let solo_generation = engine.generate(request()).unwrap();

    let tokens = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    let (first_token_tx, first_token_rx) = mpsc::channel();
    let handle = engine.submit(request()).unwrap();
    let (streamed_ids, streamed_text, overlap) = std::thread::scope(|scope| {
        // Embeds from another thread, again and again while the generation streams, until one
        // call saw tokens arrive while it ran (bounded: the generation has 200 tokens).
        let (engine, texts, tokens, finished) = (&engine, &texts, &tokens, &finished);
        let embedder = scope.spawn(move || {
            first_token_rx.recv().expect("the generation streams a first token");
            let mut calls = Vec::new();
            while !finished.load(Ordering::Acquire) {
                let tokens_at_start = tokens.load(Ordering::Acquire);
                let vectors = engine.embed(texts).unwrap().vectors;
                let call = Overlap {
                    vectors,
                    tokens_at_start,
                    tokens_at_end: tokens.load(Ordering::Acquire),
                    generation_finished_at_end: finished.load(Ordering::Acquire),
                };
                let overlapped = call.tokens_at_end > call.tokens_at_start && !call.generation_finished_at_end;
                calls.push(call);
                if overlapped {
                    break;
                }
            }
            calls
        });
        let (mut ids, mut text) = (Vec::new(), String::new());
        for event in handle {
            if let Event::Token { id, text: piece, .. } = event {
                ids.push(id);
                text.push_str(&piece);
                if tokens.fetch_add(1, Ordering::AcqRel) == 0 {
                    first_token_tx.send(()).unwrap();
                }
            }
        }
        finished.store(true, Ordering::Release);
        (ids, text, embedder.join().expect("the embedding thread does not panic"))
    });

    let last = overlap.last().expect("at least one embed call ran while the generation streamed");
    assert!(
        last.tokens_at_end > last.tokens_at_start && !last.generation_finished_at_end,
        "no embed call overlapped the generation in {} calls (the last saw tokens {}..{}, finished: {})",
        overlap.len(),
        last.tokens_at_start,
        last.tokens_at_end,
        last.generation_finished_at_end
    );
    for call in &overlap {
        assert_eq!(bits(&call.vectors), bits(&solo_vectors), "an embedding beside generation equals the solo one");
    }
    assert_eq!(streamed_ids, solo_generation.token_ids, "the generation beside embeddings equals the solo one");
    assert_eq!(streamed_text, solo_generation.text);
}
