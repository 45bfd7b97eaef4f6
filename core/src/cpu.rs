//! Which SIMD kernels this CPU can run, detected once at runtime (the standard library caches
//! the answers) and named in one place for every module that picks a kernel.

/// AVX2 and FMA: the float kernels (BERT matmul, SiLU).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// AVX2, FMA and F16C: the quantized and attention kernels, which also widen f16 values.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma_f16c() -> bool {
    has_avx2_fma() && is_x86_feature_detected!("f16c")
}
