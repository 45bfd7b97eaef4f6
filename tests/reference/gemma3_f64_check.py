"""A float64 Gemma 3 forward in numpy on the real file's weights (dequantized by the `gguf`
package), teacher-forced on the llama.cpp fixture's ids: how far llama.cpp's log-probabilities
(and, if the `cortexstream` module is installed, ours) are from exact arithmetic on the same
weights. Evidence for the tolerances in `gemma3_llamacpp.py` / `core/tests/gemma3_real.rs`;
not run by CI (about a minute, 3 GB of RAM). `gemma3_f64_fixture.py` reuses `forward` to write
the committed float64 fixture `tests/fixtures/gemma3_f64.json`.

    python tests/reference/gemma3_f64_check.py
"""
import json, os, sys
from pathlib import Path
import numpy as np, gguf
from gguf.quants import dequantize
REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CORTEXSTREAM_CACHE", Path.home() / ".cache" / "cortexstream"))
MODEL = CACHE / "models" / "gemma3" / "gemma-3-270m-q4_k_m.gguf"
r = gguf.GGUFReader(str(MODEL))
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape([int(d) for d in reversed(t.shape)] if len(t.shape) > 1 else -1)
emb = W('token_embd.weight')
L = 18; H = 4; D = 256; eps = 1e-6
layers = []
for l in range(L):
    g = lambda n: W(f'blk.{l}.{n}.weight')
    layers.append({n: g(n) for n in ['attn_q','attn_k','attn_v','attn_output','attn_q_norm','attn_k_norm','attn_norm','post_attention_norm','ffn_norm','post_ffw_norm','ffn_gate','ffn_up','ffn_down']})
out_norm = W('output_norm.weight')
def rms(x, w): return x / np.sqrt((x*x).mean(-1, keepdims=True) + eps) * w
def rope(x, pos, base):  # x [n, heads, D], neox halves
    half = D // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2 / D)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a*c - b*s, a*s + b*c], -1)
def gelu(x): return 0.5*x*(1+np.tanh(np.sqrt(2/np.pi)*(x+0.044715*x**3)))
def forward(ids):
    n = len(ids); pos = np.arange(n, dtype=np.float64)
    x = emb[ids] * np.sqrt(640.0)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l, p in enumerate(layers):
        base = 1e6 if l % 6 == 5 else 1e4
        h = rms(x, p['attn_norm'])
        q = (h @ p['attn_q'].T).reshape(n, H, D); k = (h @ p['attn_k'].T).reshape(n, 1, D); v = (h @ p['attn_v'].T).reshape(n, 1, D)
        q = rope(rms(q, p['attn_q_norm']), pos, base); k = rope(rms(k, p['attn_k_norm']), pos, base)
        s = np.einsum('qhd,kd->hqk', q, k[:, 0]) / 16.0 + mask
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        o = np.einsum('hqk,kd->qhd', s, v[:, 0]).reshape(n, H*D)
        x = x + rms(o @ p['attn_output'].T, p['post_attention_norm'])
        h = rms(x, p['ffn_norm'])
        f = (gelu(h @ p['ffn_gate'].T) * (h @ p['ffn_up'].T)) @ p['ffn_down'].T
        x = x + rms(f, p['post_ffw_norm'])
    logits = rms(x, out_norm) @ emb.T
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
def main():
    fx = json.load(open(REPO / 'tests' / 'fixtures' / 'gemma3_llamacpp.json'))
    try:
        import cortexstream
        engine = cortexstream.Engine(str(MODEL), embedding_model=False, kv_cache_tokens=1024)
    except ImportError:
        engine = None
    llama_err, our_err = [], []
    for p in fx['prompts']:
        lp = forward(np.array(p['prompt_ids'] + p['generated_ids']))
        for i, step in enumerate(p['steps']):
            row = lp[len(p['prompt_ids']) - 1 + i]
            exact = float(row[step['id']])
            llama_err.append(abs(step['logprob'] - exact))
            if engine is not None:
                c = engine.generate(p['prompt_ids'] + p['generated_ids'][:i], max_tokens=1, temperature=0, logprobs=5)
                ours = dict(c.logprobs[0].top).get(step['id'])
                if ours is not None:
                    our_err.append(abs(ours - exact))
    print('llama.cpp |logprob - float64|: max %.3f mean %.4f' % (max(llama_err), np.mean(llama_err)))
    if our_err:
        print('cortexstream |logprob - float64|: max %.3f mean %.4f' % (max(our_err), np.mean(our_err)))

if __name__ == '__main__':
    main()
