//! How a model writes a tool call, told from its chat template's source.

use serde::{Deserialize, Serialize};

/// A model family's tool-call syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallFormat {
    /// Hermes 2 Pro / Hermes 3 / Qwen 2.5 / QwQ / Qwen 3: each call is
    /// `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>`.
    Hermes,
    /// Llama 3.1 / 3.2 / 3.3: the answer is `{"name": .., "parameters": {..}}` (optionally
    /// after `<|python_tag|>`); several calls are separated by `;`.
    Llama3,
    /// Mistral Nemo: `[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]`.
    Mistral,
    /// Newer Mistral templates (Mistral Small 3.2, Devstral, Ministral 3): each call is
    /// `[TOOL_CALLS]name[ARGS]{..}` (Mistral Small 3.2 puts `[CALL_ID]id` before `[ARGS]`).
    MistralArgs,
    /// Templates without tool support: the tools are listed in a system message and a call is
    /// the JSON object `{"tool_calls": [{"name": .., "arguments": {..}}]}`.
    Generic,
}

impl ToolCallFormat {
    /// The format a chat template's source writes its calls in; [`Generic`](Self::Generic)
    /// when the source shows no known call syntax (it then never receives `tools`).
    pub fn detect(template_source: &str) -> Self {
        let has = |needle: &str| template_source.contains(needle);
        if has("<tool_call>") {
            ToolCallFormat::Hermes
        } else if has("[TOOL_CALLS]") && has("[ARGS]") {
            ToolCallFormat::MistralArgs
        } else if has("[TOOL_CALLS]") {
            ToolCallFormat::Mistral
        } else if has("<|start_header_id|>") && has("tools") && (has("<|python_tag|>") || has("\"parameters\"")) {
            ToolCallFormat::Llama3
        } else {
            ToolCallFormat::Generic
        }
    }

    /// The name used in APIs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolCallFormat::Hermes => "hermes",
            ToolCallFormat::Llama3 => "llama3",
            ToolCallFormat::Mistral => "mistral",
            ToolCallFormat::MistralArgs => "mistral_args",
            ToolCallFormat::Generic => "generic",
        }
    }

    /// The key a call's arguments go under in this syntax.
    pub(crate) fn arguments_key(self) -> &'static str {
        match self {
            ToolCallFormat::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}
