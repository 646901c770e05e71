//! Reference for `shaders/embedding.wgsl`: out[t, :] = table[ids[t], :] (or += when accumulating,
//! as GPT-2 adds its learned positions onto the token embeddings).

pub fn embedding(table: &[f32], dim: usize, ids: &[u32], out: &mut [f32], accumulate: bool) {
    for (t, &id) in ids.iter().enumerate() {
        let row = &table[id as usize * dim..(id as usize + 1) * dim];
        let dst = &mut out[t * dim..(t + 1) * dim];
        for (o, &v) in dst.iter_mut().zip(row) {
            *o = if accumulate { *o + v } else { v };
        }
    }
}
