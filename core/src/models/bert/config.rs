//! The JSON files of a sentence-transformers folder that shape the network: `config.json`
//! (the BERT architecture), `1_Pooling/config.json` (how token vectors become one vector) and
//! the optional `sentence_bert_config.json` (the sequence length the model was trained for).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The architecture fields of `config.json` this implementation reads.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
}

fn two() -> usize {
    2
}

fn absolute() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Reads `config.json` and rejects variants the encoder does not implement.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let config: Self = read_json(&path)?;
        let unsupported = |message: String| Err(Error::model_load(&path, message));
        if config.hidden_act != "gelu" {
            return unsupported(format!("hidden_act `{}` is not supported (only the exact `gelu`)", config.hidden_act));
        }
        if config.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                config.position_embedding_type
            ));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            ));
        }
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// `1_Pooling/config.json`: only mean pooling is implemented, so anything else is a load error
/// rather than silently different vectors.
pub(super) fn require_mean_pooling(dir: &Path) -> Result<()> {
    #[derive(Deserialize)]
    struct PoolingConfig {
        #[serde(default)]
        pooling_mode_mean_tokens: bool,
        #[serde(default)]
        pooling_mode_cls_token: bool,
        #[serde(default)]
        pooling_mode_max_tokens: bool,
        #[serde(default)]
        pooling_mode_mean_sqrt_len_tokens: bool,
    }
    let path = dir.join("1_Pooling").join("config.json");
    let pooling: PoolingConfig = read_json(&path)?;
    let others =
        pooling.pooling_mode_cls_token || pooling.pooling_mode_max_tokens || pooling.pooling_mode_mean_sqrt_len_tokens;
    if !pooling.pooling_mode_mean_tokens || others {
        return Err(Error::model_load(
            &path,
            "only mean pooling is supported (pooling_mode_mean_tokens alone must be true)",
        ));
    }
    Ok(())
}

/// `max_seq_length` from the optional `sentence_bert_config.json`.
pub(super) fn max_seq_length(dir: &Path) -> Result<Option<usize>> {
    #[derive(Deserialize)]
    struct SentenceBertConfig {
        max_seq_length: Option<usize>,
    }
    let path = dir.join("sentence_bert_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let config: SentenceBertConfig = read_json(&path)?;
    Ok(config.max_seq_length)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::model_load(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::model_load(path, format!("invalid JSON: {e}")))
}
