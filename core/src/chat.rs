//! Chat templates (helper B).
