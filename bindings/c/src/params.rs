//! The two params structs callers fill (`cs_engine_params`, `cs_sampling_params`), their
//! defaults, and their conversion to the core's `EngineConfig` and `RequestOptions`.
//! Types and ranges of sampling values are checked by the core; here only what C's types add
//! (sentinels like -1, NULL strings, the constraint kind) is handled.

use std::ffi::c_char;
use std::mem::size_of;
use std::path::PathBuf;

use cortexstream::{Constraint, EngineConfig, OptionValue, RequestOptions, SamplingParams};

use crate::args::{c_str, c_str_array, optional_c_str, slice, SizedParams};
use crate::status::Failure;

/// `cs_sampling_params.seed` value that asks for a random seed.
pub const CS_SEED_RANDOM: u64 = u64::MAX;

/// `cs_sampling_params.constraint_kind`: free text (the default).
pub const CS_CONSTRAINT_NONE: i32 = 0;
/// The output is one JSON value valid against the JSON schema in `constraint`.
pub const CS_CONSTRAINT_JSON_SCHEMA: i32 = 1;
/// The output is a JSON object (OpenAI's JSON mode); `constraint` is ignored.
pub const CS_CONSTRAINT_JSON_OBJECT: i32 = 2;
/// The whole output matches the regular expression in `constraint`.
pub const CS_CONSTRAINT_REGEX: i32 = 3;
/// The output follows the Lark grammar in `constraint` (llguidance's dialect).
pub const CS_CONSTRAINT_GRAMMAR: i32 = 4;
/// The output is one of the strings of the JSON array in `constraint` (`["yes", "no"]`).
pub const CS_CONSTRAINT_CHOICES: i32 = 5;

/// How to build an engine. Get one from `cs_engine_default_params()`, then set `model_path`.
/// Sizes of 0 in `context_length` and `threads` mean "automatic".
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct cs_engine_params {
    /// `sizeof(cs_engine_params)` as the caller was compiled; set by `cs_engine_default_params()`.
    pub struct_size: usize,
    /// Path of the GGUF model (UTF-8, required). Borrowed only during `cs_engine_new`.
    pub model_path: *const c_char,
    /// tokenizer.json overriding the GGUF's own tokenizer, or NULL.
    pub tokenizer_path: *const c_char,
    /// Folder of a sentence-transformers embedding model (e.g. all-MiniLM-L6-v2), or NULL for none.
    pub embedding_model_path: *const c_char,
    /// Most sequences decoded together in one step (default 32).
    pub max_running: usize,
    /// Token budget of one step, its decodes and prompt chunks together (vLLM's
    /// `max_num_batched_tokens`): the budget itself when `target_step_ms` is 0, its ceiling
    /// otherwise (default 2048, at most 2^20). Every running decode is in every step; long
    /// prompts are prefilled in chunks of what the decodes leave (at least 1 token a step). A
    /// step with no running decode takes this many prompt tokens whatever the target: a request
    /// arriving meanwhile waits for that one step, then is admitted ahead of the rest. So does a
    /// burst of prompts beside streams that had their first token only after the oldest waiting
    /// prompt arrived (32 clients at once start within a few steps).
    pub max_batch_tokens: usize,
    /// Total tokens the KV cache holds across all sequences (default 16384). A cache larger than
    /// the machine's memory is CS_INVALID_ARGUMENT naming `kv_cache_tokens`.
    pub kv_cache_tokens: usize,
    /// Tokens per KV cache block (default 16).
    pub block_size: usize,
    /// Context window; 0 uses the model's.
    pub context_length: usize,
    /// Compute threads (including the engine thread); 0 uses one per physical core. At most 4 per
    /// available CPU (and never more than 1024, `cortexstream::threadpool::MAX_THREADS`); more, or
    /// a count the system cannot start, fails with CS_INVALID_ARGUMENT naming `threads`.
    pub threads: usize,
    /// Requests allowed to wait beyond the running ones; more are rejected with CS_OVERLOADED (default 256).
    pub max_queue: usize,
    /// A Jinja chat template (UTF-8) used instead of the model's own, or NULL. A model without
    /// a template (a base model) needs one for chat requests, which otherwise fail with
    /// CS_CHAT_TEMPLATE. Borrowed only during `cs_engine_new`.
    pub chat_template: *const c_char,
    /// Target duration in milliseconds of a step that carries running decodes and prompt
    /// tokens, i.e. the inter-token latency of running streams while prompts are prefilled
    /// beside them (streams whose first token came before the oldest waiting prompt arrived): such a step costs the larger of this target and twice the decodes' own
    /// step (measured in CPU time), so their latency is at most max(target, 2x without the
    /// prompt) (default 25). 0 keeps a fixed budget of `max_batch_tokens`; a
    /// negative, NaN or above-10000 value is CS_INVALID_ARGUMENT naming `target_step_ms`.
    /// Appended after `chat_template`: a caller whose `struct_size` ends before it gets the default.
    pub target_step_ms: f64,
    /// Most prompt tokens one step computes, whatever the budget (default 2048, at most 2^20).
    /// Appended in 0.3 (CS_VERSION_MINOR 3), as is `log_prompts`.
    pub max_prefill_tokens: usize,
    /// Put each request's prompt text in its `queued` log record (see `cs_set_log_callback`);
    /// default false: prompts are never logged. Must hold 0 or 1.
    pub log_prompts: bool,
    /// How the KV cache stores keys and values (UTF-8): "f16" (NULL: the default) or "q8_0"
    /// (8 bits with an f16 scale per 32 values, about half the memory per token, for a small
    /// logit error); anything else is CS_INVALID_ARGUMENT naming `kv_cache_type`. Borrowed only
    /// during `cs_engine_new`. Appended in 0.3 (CS_VERSION_MINOR 3).
    pub kv_cache_type: *const c_char,
}

/// How to sample and when to stop. Get one from `cs_sampling_default_params()`
/// (llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05).
/// Out-of-range values make the submit fail with CS_INVALID_ARGUMENT naming the field.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct cs_sampling_params {
    /// `sizeof(cs_sampling_params)` as the caller was compiled; set by `cs_sampling_default_params()`.
    pub struct_size: usize,
    /// 0 means greedy; otherwise at least FLT_MIN (1.17549435e-38, so that 1/temperature is finite).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables; must be >= 0.
    pub top_k: i32,
    /// Nucleus sampling in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Min-p in [0, 1]; 0 disables.
    pub min_p: f32,
    /// Multiplicative penalty on tokens already seen; 1 disables; must be > 0.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2].
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at; 0 means all.
    pub penalty_last_n: usize,
    /// RNG seed of this request; CS_SEED_RANDOM picks one at random.
    pub seed: u64,
    /// Most tokens to generate, at least 1; -1 means until end of generation or a full context.
    pub max_tokens: i64,
    /// Strings that end generation (never emitted), `stop_len` of them; NULL if none.
    /// Borrowed only during the submit call.
    pub stop: *const *const c_char,
    /// Number of strings in `stop`.
    pub stop_len: usize,
    /// Token ids that end generation in addition to the model's own, `stop_token_ids_len` of them.
    pub stop_token_ids: *const u32,
    /// Number of ids in `stop_token_ids`.
    pub stop_token_ids_len: usize,
    /// Keep generating past end-of-generation tokens. Must hold 0 or 1 (a byte set any other
    /// way, e.g. by memset, fails with CS_INVALID_ARGUMENT naming `ignore_eos`).
    pub ignore_eos: bool,
    /// Report each token's log-probability and this many top alternatives (0 to 20); -1 reports none.
    pub logprobs: i32,
    /// Scheduling priority of the request: higher runs first, equal ones in arrival order.
    pub priority: i32,
    /// OpenAI-style logit bias: `logit_bias_values[i]` (in [-100, 100]) is added to the logit of
    /// token `logit_bias_ids[i]`, for `logit_bias_len` entries; NULL if none.
    /// Borrowed only during the submit call.
    pub logit_bias_ids: *const u32,
    /// Biases matching `logit_bias_ids`.
    pub logit_bias_values: *const f32,
    /// Number of entries in `logit_bias_ids` and `logit_bias_values`.
    pub logit_bias_len: usize,
    /// What the output must follow: one of the `CS_CONSTRAINT_*` values (default
    /// CS_CONSTRAINT_NONE). A constraint that does not compile fails the submit with
    /// CS_INVALID_ARGUMENT naming `json_schema`, `regex`, `grammar` or `choices`.
    pub constraint_kind: i32,
    /// The constraint's text (UTF-8): a JSON schema, a regex, a Lark grammar or a JSON array of
    /// strings, per `constraint_kind`; NULL for CS_CONSTRAINT_NONE and CS_CONSTRAINT_JSON_OBJECT.
    /// Borrowed only during the submit call.
    pub constraint: *const c_char,
    /// Tools the model may call (chat requests only), as JSON text (UTF-8) in OpenAI's shape:
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`; NULL for
    /// none. Malformed tools fail the submit with CS_INVALID_ARGUMENT naming `tools` (the
    /// message gives the path, e.g. `tools[0].function.name`). Borrowed only during the submit.
    pub tools: *const c_char,
    /// With `tools`: `none`, `auto` (NULL means auto), `required`, or a named function as JSON
    /// (`{"type": "function", "function": {"name": "f"}}`). With `required` or a named
    /// function the output is constrained to a call whose arguments validate against the
    /// tool's schema. Borrowed only during the submit.
    pub tool_choice: *const c_char,
    /// With `tools`: 1 allows several calls per answer, 0 one; -1 (default) means 1.
    pub parallel_tool_calls: i32,
    /// A label (UTF-8) carried by the request's log records (the `tag` of their fields, see
    /// `cs_set_log_callback`), e.g. the caller's request id; NULL for none. Borrowed only during
    /// the submit. Appended in 0.3 (CS_VERSION_MINOR 3).
    pub tag: *const c_char,
}

impl SizedParams for cs_engine_params {
    const BOOL_FIELDS: &'static [(usize, &'static str)] =
        &[(std::mem::offset_of!(cs_engine_params, log_prompts), "log_prompts")];
}

impl SizedParams for cs_sampling_params {
    const BOOL_FIELDS: &'static [(usize, &'static str)] =
        &[(std::mem::offset_of!(cs_sampling_params, ignore_eos), "ignore_eos")];
}

/// Engine params with every field at its default and no model path.
///
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn cs_engine_default_params() -> cs_engine_params {
    let defaults = EngineConfig::new(PathBuf::new());
    cs_engine_params {
        struct_size: size_of::<cs_engine_params>(),
        model_path: std::ptr::null(),
        tokenizer_path: std::ptr::null(),
        embedding_model_path: std::ptr::null(),
        max_running: defaults.max_running,
        max_batch_tokens: defaults.max_batch_tokens,
        kv_cache_tokens: defaults.kv_cache_tokens,
        block_size: defaults.block_size,
        context_length: defaults.context_length.unwrap_or(0),
        threads: defaults.threads.unwrap_or(0),
        max_queue: defaults.max_queue,
        chat_template: std::ptr::null(),
        target_step_ms: defaults.target_step_ms.unwrap_or(0.0),
        max_prefill_tokens: defaults.max_prefill_tokens,
        log_prompts: defaults.log_prompts,
        kv_cache_type: std::ptr::null(),
    }
}

/// Sampling params with the core's defaults (see `cs_sampling_params`).
///
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn cs_sampling_default_params() -> cs_sampling_params {
    let defaults = SamplingParams::default();
    cs_sampling_params {
        struct_size: size_of::<cs_sampling_params>(),
        temperature: defaults.temperature,
        top_k: i32::try_from(defaults.top_k).unwrap_or(i32::MAX),
        top_p: defaults.top_p,
        min_p: defaults.min_p,
        repetition_penalty: defaults.repetition_penalty,
        presence_penalty: defaults.presence_penalty,
        frequency_penalty: defaults.frequency_penalty,
        penalty_last_n: defaults.penalty_last_n,
        seed: defaults.seed.unwrap_or(CS_SEED_RANDOM),
        max_tokens: defaults.max_tokens.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        stop: std::ptr::null(),
        stop_len: 0,
        stop_token_ids: std::ptr::null(),
        stop_token_ids_len: 0,
        ignore_eos: defaults.ignore_eos,
        logprobs: defaults.logprobs.map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
        priority: 0,
        logit_bias_ids: std::ptr::null(),
        logit_bias_values: std::ptr::null(),
        logit_bias_len: 0,
        constraint_kind: CS_CONSTRAINT_NONE,
        constraint: std::ptr::null(),
        tools: std::ptr::null(),
        tool_choice: std::ptr::null(),
        parallel_tool_calls: -1,
        tag: std::ptr::null(),
    }
}

impl cs_engine_params {
    /// The core config these params describe: the fields become the core's engine settings
    /// (the one conversion of this struct), which the core reads and checks as it does every
    /// door's. Only C's own spellings are handled here: NULL strings and the 0 of
    /// `context_length` and `threads` are "not set".
    ///
    /// # Safety
    /// The string fields must be NULL or NUL-terminated.
    pub(crate) unsafe fn to_config(self) -> Result<EngineConfig, Failure> {
        // SAFETY: forwarded caller contract.
        let model = unsafe { c_str(self.model_path, "model_path")? };
        // SAFETY: forwarded caller contract.
        let settings = unsafe { self.settings()? };
        let value = OptionValue::Map(settings.into_iter().map(|(name, value)| (name.to_owned(), value)).collect());
        Ok(EngineConfig::from_settings(model, value)?)
    }

    /// Every field but `model_path` as the core's engine setting of the same name.
    ///
    /// # Safety
    /// The string fields must be NULL or NUL-terminated.
    pub(crate) unsafe fn settings(&self) -> Result<Vec<(&'static str, OptionValue)>, Failure> {
        let text = |ptr, param| -> Result<OptionValue, Failure> {
            // SAFETY: forwarded caller contract.
            let text = unsafe { optional_c_str(ptr, param)? };
            Ok(text.map_or(OptionValue::Null, |text| OptionValue::Str(text.to_owned())))
        };
        let size = |n: usize| OptionValue::Int(n as i128);
        let automatic_if_zero = |n: usize| if n == 0 { OptionValue::Null } else { size(n) };
        Ok(vec![
            ("tokenizer", text(self.tokenizer_path, "tokenizer_path")?),
            ("embedding_model", text(self.embedding_model_path, "embedding_model_path")?),
            ("max_running", size(self.max_running)),
            ("max_batch_tokens", size(self.max_batch_tokens)),
            ("target_step_ms", OptionValue::Float(self.target_step_ms)),
            ("max_prefill_tokens", size(self.max_prefill_tokens)),
            ("kv_cache_tokens", size(self.kv_cache_tokens)),
            ("block_size", size(self.block_size)),
            ("context_length", automatic_if_zero(self.context_length)),
            ("threads", automatic_if_zero(self.threads)),
            ("max_queue", size(self.max_queue)),
            ("chat_template", text(self.chat_template, "chat_template")?),
            ("log_prompts", OptionValue::Bool(self.log_prompts)),
            ("kv_cache_type", text(self.kv_cache_type, "kv_cache_type")?),
        ])
    }
}

impl cs_sampling_params {
    /// The core request options these describe: the one conversion of the C struct. The
    /// fields become the core's language-neutral value, which the core reads as it reads every
    /// door's (so a negative `top_k` gets the same message as in Python); only C's sentinels
    /// (-1, `CS_SEED_RANDOM`) and the constraint kind are C's own.
    ///
    /// # Safety
    /// `stop`, `stop_token_ids`, `logit_bias_ids` and `logit_bias_values` must be NULL or hold
    /// their stated number of valid elements; `constraint`, `tools`, `tool_choice` and `tag`
    /// must be NULL or NUL-terminated.
    pub(crate) unsafe fn to_options(self) -> Result<RequestOptions, Failure> {
        // SAFETY (all four): forwarded caller contract.
        let stop = unsafe { c_str_array(self.stop, self.stop_len, "stop")? };
        let stop_token_ids = unsafe { slice(self.stop_token_ids, self.stop_token_ids_len, "stop_token_ids")? };
        let bias_ids = unsafe { slice(self.logit_bias_ids, self.logit_bias_len, "logit_bias")? };
        let bias_values = unsafe { slice(self.logit_bias_values, self.logit_bias_len, "logit_bias")? };
        let int = |n: i128| OptionValue::Int(n);
        let float = |x: f32| OptionValue::Float(f64::from(x));
        let fields = vec![
            ("temperature", float(self.temperature)),
            ("top_k", int(self.top_k.into())),
            ("top_p", float(self.top_p)),
            ("min_p", float(self.min_p)),
            ("repetition_penalty", float(self.repetition_penalty)),
            ("presence_penalty", float(self.presence_penalty)),
            ("frequency_penalty", float(self.frequency_penalty)),
            ("penalty_last_n", int(self.penalty_last_n as i128)),
            ("seed", if self.seed == CS_SEED_RANDOM { OptionValue::Null } else { int(self.seed.into()) }),
            ("max_tokens", unset_if_minus_one(self.max_tokens)),
            ("stop", OptionValue::List(stop.into_iter().map(|s| OptionValue::Str(s.to_owned())).collect())),
            ("stop_token_ids", OptionValue::List(stop_token_ids.iter().map(|&id| int(id.into())).collect())),
            ("ignore_eos", OptionValue::Bool(self.ignore_eos)),
            ("logprobs", unset_if_minus_one(self.logprobs.into())),
            ("priority", int(self.priority.into())),
            (
                "logit_bias",
                OptionValue::Map(
                    bias_ids.iter().zip(bias_values).map(|(id, &bias)| (id.to_string(), float(bias))).collect(),
                ),
            ),
        ];
        // SAFETY: forwarded caller contract.
        let tag = unsafe { optional_c_str(self.tag, "tag")? };
        let tag = ("tag", tag.map_or(OptionValue::Null, |tag| OptionValue::Str(tag.to_owned())));
        // SAFETY: forwarded caller contract.
        let fields = fields.into_iter().chain([tag]).chain(unsafe { self.tool_fields()? });
        let value = OptionValue::Map(fields.map(|(name, value)| (name.to_owned(), value)).collect());
        let mut options = RequestOptions::from_value(value)?;
        // SAFETY: forwarded caller contract.
        options.sampling.constraint = unsafe { self.constraint()? };
        Ok(options)
    }

    /// `tools`, `tool_choice` and `parallel_tool_calls` as the core's option values (the core
    /// parses the texts and checks the tools); only the -1/0/1 of `parallel_tool_calls` is C's.
    ///
    /// # Safety
    /// `tools` and `tool_choice` must be NULL or NUL-terminated.
    unsafe fn tool_fields(&self) -> Result<[(&'static str, OptionValue); 3], Failure> {
        // SAFETY (both): forwarded caller contract.
        let tools = unsafe { optional_c_str(self.tools, "tools")? };
        let choice = unsafe { optional_c_str(self.tool_choice, "tool_choice")? };
        let parallel = match self.parallel_tool_calls {
            -1 => OptionValue::Null,
            0 => OptionValue::Bool(false),
            1 => OptionValue::Bool(true),
            other => return Err(Failure::invalid("parallel_tool_calls", format!("must be -1, 0 or 1, got {other}"))),
        };
        let [tools, choice] = cortexstream::tools::text_options(tools, choice)?;
        Ok([tools, choice, ("parallel_tool_calls", parallel)])
    }

    /// The core constraint of `constraint_kind` and `constraint` (the core parses the text).
    ///
    /// # Safety
    /// `constraint` must be NULL or NUL-terminated.
    unsafe fn constraint(&self) -> Result<Option<Constraint>, Failure> {
        let kind = match self.constraint_kind {
            CS_CONSTRAINT_NONE => return Ok(None),
            CS_CONSTRAINT_JSON_OBJECT => return Ok(Some(Constraint::json_object())),
            CS_CONSTRAINT_JSON_SCHEMA => "json_schema",
            CS_CONSTRAINT_REGEX => "regex",
            CS_CONSTRAINT_GRAMMAR => "grammar",
            CS_CONSTRAINT_CHOICES => "choices",
            other => {
                return Err(Failure::invalid(
                    "constraint_kind",
                    format!("must be one of the CS_CONSTRAINT_* values (0 to 5), got {other}"),
                ))
            }
        };
        // SAFETY: forwarded caller contract.
        let text = unsafe { c_str(self.constraint, "constraint")? };
        Ok(Some(Constraint::from_kind(kind, text)?))
    }
}

/// A C count where -1 means "not set"; any other value goes to the core, which refuses other
/// negatives with the message every door gives and 0 with its own (e.g. "max_tokens must be at
/// least 1").
fn unset_if_minus_one(value: i64) -> OptionValue {
    match value {
        -1 => OptionValue::Null,
        n => OptionValue::Int(n.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine setting of the core is a field of `cs_engine_params` (under its name), so a
    /// setting added to the core fails here until the struct grows (appended) to take it.
    #[test]
    fn the_engine_params_carry_every_core_setting() {
        let params = cs_engine_default_params();
        // SAFETY: the default params' strings are NULL.
        let mut names: Vec<&str> = unsafe { params.settings() }.unwrap().into_iter().map(|(name, _)| name).collect();
        let mut core_names = EngineConfig::setting_names();
        names.sort_unstable();
        core_names.sort_unstable();
        assert_eq!(names, core_names);
    }

    #[test]
    fn the_default_engine_params_are_the_core_defaults() {
        let mut params = cs_engine_default_params();
        params.model_path = c"m.gguf".as_ptr();
        // SAFETY: the strings are NULL or NUL-terminated literals.
        let config = unsafe { params.to_config() }.unwrap();
        assert_eq!(format!("{config:?}"), format!("{:?}", EngineConfig::new("m.gguf")));
    }
}
