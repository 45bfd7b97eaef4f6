//! Writing a step's new keys and values into the paged KV cache.

use crate::kv_cache::KvStorage;
use crate::models::attention::Geometry;
use crate::models::SeqChunk;

/// Stores each row's K and V (as f16) into layer `layer` of the paged cache, at the row's
/// position through its chunk's block table of the layer's pool.
pub(crate) fn store_keys_and_values(
    qkv: &[f32],
    g: &Geometry,
    layer: usize,
    chunks: &[SeqChunk<'_>],
    kv: &mut KvStorage,
) {
    let mut rows = qkv.chunks_exact(g.qkv_row_len);
    let pool = kv.pool_of(layer);
    for chunk in chunks {
        let table = chunk.table(pool);
        for (position, row) in (chunk.start_pos..).zip(rows.by_ref().take(chunk.tokens.len())) {
            let (key, value) = row[g.q_dim()..].split_at(g.kv_dim());
            kv.write(layer, table, position, key, value);
        }
    }
}
