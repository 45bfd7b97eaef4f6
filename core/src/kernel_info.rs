//! Which compute kernels this CPU runs, named for benchmark reports and diagnostics (the
//! choice itself lives beside each kernel; this only asks it).

/// The kernels the engine picks on this CPU. Every path gives the same bits; only speed differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Quantized matmul for one activation row (one stream decoding): `portable`, `avx2`,
    /// `avx_vnni` or `avx512_vnni`.
    pub matmul: &'static str,
    /// Quantized matmul for a batch of 32 rows (many streams, or a prefill chunk): as
    /// `matmul`, or `amx`.
    pub matmul_batched: &'static str,
    /// Whether 32-row batches of the Q8_0/Q5_x/K-quant formats take the 512-bit paired-group
    /// AVX512-VNNI kernel.
    pub matmul_batched_512: bool,
    /// Attention over the KV cache: `portable`, `avx2` or `avx512`.
    pub attention: &'static str,
    /// Positions per slice of long-context attention; a lone decode longer than one slice is
    /// spread over the threads one slice per task.
    pub attention_slice: usize,
}

/// The kernels this CPU runs (detected at runtime; cheap after the first call).
pub fn kernel_info() -> KernelInfo {
    let (matmul, matmul_batched, matmul_batched_512) = crate::quant::kernel_names();
    KernelInfo {
        matmul,
        matmul_batched,
        matmul_batched_512,
        attention: crate::models::attention::kernel_name(),
        attention_slice: crate::models::attention_split::SLICE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report names a kernel this CPU can run: on x86-64 with AVX2 never the portable one.
    #[test]
    fn the_report_matches_the_cpu() {
        let info = kernel_info();
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::has_avx2_fma_f16c() {
            assert_ne!(info.matmul, "portable");
            assert_ne!(info.attention, "portable");
            assert_eq!(info.attention == "avx512", crate::cpu::has_avx512f_f16c());
            assert_eq!(info.matmul == "avx512_vnni", crate::cpu::has_avx512_vnni());
        }
        assert!(info.attention_slice > 0);
    }
}
