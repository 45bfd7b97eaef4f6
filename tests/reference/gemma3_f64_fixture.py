"""Writes `tests/fixtures/gemma3_f64.json`: the float64 forward of `gemma3_f64_check.py` (numpy,
weights dequantized by the `gguf` package, independent of our code), teacher-forced on each
prompt of the llama.cpp fixture plus its first greedy ids, keeping per position the float64
top-5 ids and their log-probabilities. `core/tests/gemma3_real.rs` holds our engine to it with
bounds far tighter than the llama.cpp comparison allows. About a minute, 3 GB of RAM.

    python tests/reference/gemma3_f64_fixture.py
"""
import json
import numpy as np
from gemma3_f64_check import REPO, forward

POSITIONS = 16  # next-token positions per prompt: the prompt's last token plus 15 greedy ids
TOP = 5


def positions(prompt):
    """Float64 top-TOP `(id, logprob)` after each prefix prompt_ids + generated_ids[:i]."""
    ids = prompt['prompt_ids'] + prompt['generated_ids'][:POSITIONS - 1]
    lp = forward(np.array(ids))
    rows = []
    for i in range(POSITIONS):
        row = lp[len(prompt['prompt_ids']) - 1 + i]
        top = np.argsort(-row)[:TOP]
        rows.append([{'id': int(t), 'logprob': round(float(row[t]), 5)} for t in top])
    return rows


def main():
    fx = json.load(open(REPO / 'tests' / 'fixtures' / 'gemma3_llamacpp.json'))
    out = {
        'about': 'float64 numpy forward of the real Gemma 3 file for core/tests/gemma3_real.rs; '
                 'written by tests/reference/gemma3_f64_fixture.py',
        'model': fx['model'],
        'prompts': [{'prompt': p['prompt'],
                     'ids': p['prompt_ids'] + p['generated_ids'][:POSITIONS - 1],
                     'prompt_len': len(p['prompt_ids']),
                     'top': positions(p)} for p in fx['prompts']],
    }
    path = REPO / 'tests' / 'fixtures' / 'gemma3_f64.json'
    path.write_text(json.dumps(out, separators=(',', ':')) + '\n')
    print('wrote', path, path.stat().st_size, 'bytes')


if __name__ == '__main__':
    main()
