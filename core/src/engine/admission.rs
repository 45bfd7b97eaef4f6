//! Admission: validating and tokenizing a request on the caller's thread, before it is
//! queued for the engine thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::handle::RequestHandle;
use super::sequence::{EventCallback, EventSink, Sequence};
use super::Shared;
use crate::detokenize::StreamingText;
use crate::error::{Error, Result};
use crate::request::{Prompt, Request, StopCriteria, StopReason};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use crate::tools;

/// Tokenizes and validates a request (on the caller's thread, so errors return at once and
/// the engine thread never tokenizes).
pub(super) fn prepare(
    shared: &Shared,
    request: Request,
    callback: Option<EventCallback>,
) -> Result<(Sequence, RequestHandle)> {
    let tokenizer = &shared.tokenizer;
    let vocab_size = shared.info.vocab_size;
    request.params.validate(vocab_size)?;
    // The sampler gets what it reads; the sequence holds the stop criteria.
    let (mut sampler_settings, stop) = request.params.split();
    let tokens = match &request.prompt {
        Prompt::Text(text) => {
            if text.is_empty() {
                return Err(Error::invalid("prompt", "the prompt must not be empty"));
            }
            tokenizer.encode(text, true)?
        }
        Prompt::Tokens(ids) => {
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                return Err(Error::invalid(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary (size {vocab_size})"),
                ));
            }
            ids.clone()
        }
        Prompt::Chat(messages) => {
            tokenizer.encode(&tools::prepare_chat(&shared.chat_template, messages, request.tools.as_ref())?, false)?
        }
    };
    if tokens.is_empty() {
        return Err(Error::invalid("prompt", "the prompt must contain at least one token"));
    }
    let context = shared.info.context_length;
    if tokens.len() >= context {
        return Err(Error::ContextLengthExceeded {
            param: if matches!(request.prompt, Prompt::Chat(_)) { "messages" } else { "prompt" },
            message: format!(
                "the prompt has {} tokens but the context window is {context} tokens (at least one must remain for the completion)",
                tokens.len()
            ),
            prompt_tokens: tokens.len(),
            max_tokens: stop.max_tokens.unwrap_or(0),
            context_length: context,
        });
    }
    debug_assert!(context <= shared.kv_capacity_tokens);
    // A completion that would overflow the context is clamped to it and ends with
    // FinishReason::Length, as llama.cpp does (documented in the README).
    let max_new_tokens = stop.max_tokens.unwrap_or(usize::MAX).min(context - tokens.len());

    // Compiled here, on the caller's thread, so a bad schema fails the submit itself. With
    // tools, a forced call is the constraint and every tool schema is checked.
    let special_token = |text: &str| tokenizer.token_to_id(text).filter(|&id| tokenizer.is_special(id));
    let compile = |c: &crate::constraint::Constraint| shared.constraints.start(c, tokenizer, vocab_size).map(drop);
    sampler_settings.constraint = tools::effective_constraint(
        sampler_settings.constraint.take(),
        request.tools.as_ref(),
        &request.prompt,
        shared.chat_template.tool_format(),
        &special_token,
        &compile,
    )?;
    let constraint =
        sampler_settings.constraint.as_ref().map(|c| shared.constraints.start(c, tokenizer, vocab_size)).transpose()?;
    let stop_ids = stop_tokens(&stop, tokenizer);
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::unbounded();
    let sink = match callback {
        Some(cb) => EventSink::Callback(cb, tx),
        None => EventSink::Channel(tx),
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let prompt_len = tokens.len();
    let span = request_span(id, request.tag.as_deref(), &request.prompt, shared.log_prompts);
    let sequence = Sequence {
        id,
        priority: request.priority,
        arrival: id,
        prompt_len,
        tokens,
        computed: 0,
        covered: 0,
        blocks: Default::default(),
        sliding_blocks: Default::default(),
        queue_slot: None,
        registered_blocks: 0,
        last_block_hash: None,
        max_new_tokens,
        text: StreamingText::new(stop.stop),
        sampler: Sampler::new(sampler_settings),
        constraint,
        stop_ids,
        sink,
        cancel: Arc::clone(&cancel),
        cached_prompt_tokens: 0,
        submitted: Instant::now(),
        first_scheduled: None,
        first_token: None,
        last_token: None,
        scheduled_this_step: false,
        span,
    };
    let handle = RequestHandle::new(id, prompt_len, rx, cancel);
    Ok((sequence, handle))
}

/// The request's log span: its engine id and the caller's tag, and its prompt text only when
/// the engine was configured to log prompts. Disabled (and free) when nobody listens.
fn request_span(id: u64, tag: Option<&str>, prompt: &Prompt, log_prompts: bool) -> tracing::Span {
    let span = tracing::info_span!(
        target: "cortexstream::request",
        "request",
        request_id = id,
        tag,
        prompt = tracing::field::Empty,
    );
    if log_prompts && !span.is_disabled() {
        span.record("prompt", prompt_text(prompt).as_str());
    }
    span
}

fn prompt_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Text(text) => text.clone(),
        Prompt::Tokens(ids) => format!("{ids:?}"),
        Prompt::Chat(messages) => serde_json::to_string(messages).unwrap_or_default(),
    }
}

/// The token ids that end a request, each with the stop it reports. A requested stop token id
/// wins over the same id as an end-of-generation token: the request named it.
fn stop_tokens(stop: &StopCriteria, tokenizer: &Tokenizer) -> HashMap<u32, StopReason> {
    let end_of_generation = tokenizer.end_of_generation_ids().iter().filter(|_| !stop.ignore_eos);
    let mut stops: HashMap<u32, StopReason> =
        end_of_generation.map(|&id| (id, StopReason::EndOfGeneration(id))).collect();
    stops.extend(stop.stop_token_ids.iter().map(|&id| (id, StopReason::StopTokenId(id))));
    stops
}
