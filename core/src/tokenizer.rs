//! Tokenizer (helper B).
