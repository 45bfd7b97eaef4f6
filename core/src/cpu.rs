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

/// AVX-512F with AVX2, FMA and F16C: the 512-bit attention kernel.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512f_f16c() -> bool {
    is_x86_feature_detected!("avx512f") && has_avx2_fma_f16c()
}

/// AVX512-VNNI with AVX512-VL: `vpdpbusd` on 256-bit vectors in its EVEX encoding.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_vnni() -> bool {
    is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

/// AVX-VNNI: `vpdpbusd` in its VEX encoding (client cores without AVX-512).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx_vnni() -> bool {
    is_x86_feature_detected!("avxvnni")
}

/// AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25), plus the AVX-512 the AMX kernels'
/// epilogue uses. The standard library's detection of AMX is not stable yet, hence CPUID. The
/// OS must still grant the tile state (see `quant::amx`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_amx_int8() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only if the CPU has it.
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0 && is_x86_feature_detected!("avx512f")
}
