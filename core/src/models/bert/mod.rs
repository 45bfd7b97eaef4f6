//! BERT sentence embeddings (helper C).
