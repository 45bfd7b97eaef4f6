//! A small fixed matmul for counting instructions under `valgrind --tool=callgrind`, and for
//! timing by CPU time (wall time is useless on a shared machine): one weight matrix of a
//! chosen type, random but fixed weights and activations, one thread, a fixed number of
//! matmuls; prints the fastest repetition's CPU time of this thread. Compare builds in
//! alternating pairs of runs (the other processes still share the caches and memory).
//!
//! `cargo run --release -p cortexstream --example matmul_driver -- Q8_0 512 640 32 4`
//! (type, rows, cols, batch rows, repetitions[, matmuls per repetition]); compare `Ir` of
//! `QMatrix::matmul` between builds. A matrix that takes a few microseconds (the single-row
//! decode shapes) needs several matmuls per repetition for the clock to resolve it: the time
//! printed is per matmul. An optional sixth argument, `copies`, makes that many distinct
//! matrices of the shape and cycles through them: with more bytes than the last-level cache
//! each matmul reads its weights from memory, cold, as a decode step reads a layer's.

#[path = "support/cpu_clock.rs"]
mod cpu_clock;
use cortexstream::gguf::GgmlType;
use cortexstream::quant::QMatrix;
use cortexstream::threadpool::ThreadPool;
use cpu_clock::thread_cpu_ns;

/// Bytes per ggml block and the offsets of its f16 scales (set to a sane value, 2^-7).
fn block_layout(ty: GgmlType) -> (usize, usize, &'static [usize]) {
    match ty {
        GgmlType::Q8_0 => (32, 34, &[0]),
        GgmlType::Q4_1 => (32, 20, &[0, 2]),
        GgmlType::Q5_0 => (32, 22, &[0]),
        GgmlType::Q4K => (256, 144, &[0, 2]),
        GgmlType::Q5K => (256, 176, &[0, 2]),
        GgmlType::Q6K => (256, 210, &[208]),
        _ => panic!("the driver covers Q8_0, Q4_1, Q5_0, Q4_K, Q5_K and Q6_K"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().expect("a number"));
    let ty = match args.first().map_or("Q8_0", String::as_str) {
        "Q8_0" => GgmlType::Q8_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q5_0" => GgmlType::Q5_0,
        "Q4_K" => GgmlType::Q4K,
        "Q5_K" => GgmlType::Q5K,
        "Q6_K" => GgmlType::Q6K,
        other => panic!("unknown type {other}"),
    };
    let (rows, cols, m, reps, calls) = (arg(1, 512), arg(2, 640), arg(3, 32), arg(4, 4), arg(5, 1).max(1));
    let (copies, threads) = (arg(6, 1).max(1), arg(7, 1).max(1));
    let (per_block, block_bytes, scales) = block_layout(ty);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut bytes: Vec<u8> = (0..rows * cols / per_block * block_bytes).map(|_| next() as u8).collect();
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &at in scales {
            block[at..at + 2].copy_from_slice(&[0x00, 0x20]);
        }
    }
    let matrices: Vec<QMatrix> = (0..copies)
        .map(|copy| {
            // Each copy's bytes differ (a rotation), so no two share pages the OS could merge.
            let mut rotated: Vec<u8> = bytes.iter().map(|&b| b.rotate_left(copy as u32 % 8)).collect();
            for block in rotated.chunks_exact_mut(block_bytes) {
                for &at in scales {
                    block[at..at + 2].copy_from_slice(&[0x00, 0x20]);
                }
            }
            QMatrix::from_ggml_bytes(ty, rows, cols, &rotated).expect("weights")
        })
        .collect();
    drop(bytes);
    let x: Vec<f32> = (0..m * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
    let pool = ThreadPool::new(threads).expect("thread pool");
    let mut out = vec![0f32; m * rows];
    let mut checksum = 0f64;
    // CPU time of this thread (the one-thread pool runs every task on its caller), not wall
    // time, which on a shared machine mostly measures the other processes.
    let (mut fastest_ns, mut fastest_wall_ns) = (u64::MAX, u64::MAX);
    for _ in 0..reps {
        let (start, wall) = (thread_cpu_ns(), std::time::Instant::now());
        for call in 0..calls {
            matrices[call % copies].matmul(&x, m, &mut out, &pool);
        }
        fastest_ns = fastest_ns.min(thread_cpu_ns().saturating_sub(start) / calls as u64);
        fastest_wall_ns = fastest_wall_ns.min(wall.elapsed().as_nanos() as u64 / calls as u64);
        checksum += out.iter().map(|&v| v as f64).sum::<f64>();
    }
    if threads > 1 {
        // The calling thread's CPU time covers its own share only: the wall time (fastest
        // repetition) is the figure that counts here, on a machine otherwise idle.
        println!("{threads} threads: fastest wall {:.4} ms per matmul", fastest_wall_ns as f64 / 1e6);
    }
    println!(
        "{ty:?} {rows}x{cols} m={m} reps={reps} copies={copies} checksum {checksum:.6} fastest {:.4} ms CPU ({:.1} GB/s of weights)",
        fastest_ns as f64 / 1e6,
        (rows * cols / per_block * block_bytes) as f64 / fastest_ns.max(1) as f64
    );
}
