//! Thread pool (helper A).
