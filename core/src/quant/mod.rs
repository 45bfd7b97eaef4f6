//! Quantized matrices and kernels (helper A).
