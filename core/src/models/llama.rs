//! Batched llama forward pass (helper A).
