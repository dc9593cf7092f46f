//! A prompt's prefix keys: the request body cut into [`CHUNK`]-byte chunks, chunk `i`'s
//! key a hash of every byte up to its end (`h_i = xxh3(chunk_i, seed = h_{i-1})`), so one
//! key stands for a whole prefix. The router's prefix-aware routing and the mock's model
//! of a backend's prefix cache both read prompts this way.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes per chunk: about 64 tokens of prompt.
pub const CHUNK: usize = 256;
/// Chunks hashed at most (a 1 MB prompt); the rest of a longer prompt is not indexed.
pub const MAX_CHUNKS: usize = 4096;

/// The prefix keys of a prompt: one per complete chunk, each covering all bytes before
/// (never 0, which marks an empty slot in an index).
pub fn keys(body: &[u8]) -> Vec<u64> {
    let n = (body.len() / CHUNK).min(MAX_CHUNKS);
    let mut out = Vec::with_capacity(n);
    let mut h = 0u64;
    for chunk in body.chunks_exact(CHUNK).take(n) {
        h = xxh3_64_with_seed(chunk, h);
        out.push(h.max(1));
    }
    out
}
