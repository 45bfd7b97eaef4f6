//! One request's position in its constraint's grammar.

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

/// A constrained sequence's grammar state: which tokens may come next, and whether the
/// output is complete.
pub(crate) struct ConstraintState {
    matcher: Matcher,
    /// The mask for the next token, computed ahead (beside the forward) by [`Self::prepare_mask`].
    prepared: Option<Result<SimpleVob, String>>,
    /// The request field the constraint came from, for error messages.
    field: &'static str,
}

impl std::fmt::Debug for ConstraintState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintState").field("field", &self.field).finish()
    }
}

impl ConstraintState {
    pub fn new(matcher: Matcher, field: &'static str) -> Self {
        Self { matcher, prepared: None, field }
    }

    /// Computes the mask for the next token now, for [`Self::mask_logits`] to use.
    pub fn prepare_mask(&mut self) {
        self.prepared = Some(self.compute_mask());
    }

    /// Whether [`Self::prepare_mask`] ran since the last token (successfully or not).
    pub fn is_mask_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// Records that preparing the mask failed (it panicked): sampling then fails the request
    /// instead of computing the mask again from a parser state that may be broken.
    pub fn fail_mask(&mut self, reason: String) {
        self.prepared = Some(Err(format!("the `{}` constraint failed: {reason}", self.field)));
    }

    fn compute_mask(&mut self) -> Result<SimpleVob, String> {
        self.matcher.compute_mask().map_err(|e| self.failure(&e))
    }

    /// Sets the logit of every token the grammar does not allow next to minus infinity, so
    /// every sampler path (greedy, top-k/p, min-p, penalties, logit bias) only sees allowed
    /// tokens. End-of-generation tokens are allowed exactly when the grammar may end here.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let mask = match self.prepared.take() {
            Some(prepared) => prepared?,
            None => self.compute_mask()?,
        };
        if mask.is_zero() {
            return Err(format!("the `{}` constraint allows no next token", self.field));
        }
        for (id, logit) in logits.iter_mut().enumerate() {
            if !mask.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the grammar by the sampled token; `true` when the output is now complete
    /// (the grammar allows nothing more, or it accepted an end-of-generation token).
    pub fn advance(&mut self, token: u32) -> Result<bool, String> {
        self.prepared = None;
        self.matcher.consume_token(token).map_err(|e| self.failure(&e))?;
        Ok(self.matcher.is_stopped())
    }

    /// The first line of llguidance's error (the rest is a dump of its parser state).
    fn failure(&self, error: &anyhow::Error) -> String {
        let text = error.to_string();
        format!("the `{}` constraint failed: {}", self.field, text.lines().next().unwrap_or_default())
    }
}
