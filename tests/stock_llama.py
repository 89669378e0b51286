"""Load exported checkpoints with plain transformers in a fresh process that imports nothing of ours.

One subprocess loads every directory it is given (a Python start costs seconds on this CPU) and
returns, per directory, the class and model_type transformers picked, fp32 logits on the given
inputs, and two greedy ``generate`` runs; plus the modules of our package that process imported
(there must be none).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

_SCRIPT = r'''
import json, sys
import torch
from transformers import AutoModelForCausalLM

spec = json.load(open(sys.argv[1]))
ids = torch.load(spec['inputs'])
results = {}
for name, path in spec['dirs'].items():
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    prompt = ids[:, :4]
    mask = torch.ones_like(prompt)
    gens = [model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False,
                           min_new_tokens=8) for _ in range(2)] if spec['generate'] else []
    results[name] = {'class': type(model).__name__, 'model_type': model.config.model_type,
                     'logits': logits, 'generated': gens}
results['_our_modules'] = sorted(m for m in sys.modules if m.split('.')[0] in ('wesar_foundry', 'tests'))
torch.save(results, spec['out'])
'''


def load_with_stock_transformers(dirs: dict[str, Path], input_ids: torch.Tensor, work: Path, generate: bool = True) -> dict:
    """Run the loader subprocess on ``dirs`` (name → exported folder); return its results
    (``generate=False``: logits only, no ``generate`` runs)."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save(input_ids, work / 'inputs.pt')
    spec = {'dirs': {k: str(v) for k, v in dirs.items()}, 'inputs': str(work / 'inputs.pt'),
            'out': str(work / 'results.pt'), 'generate': generate}
    (work / 'spec.json').write_text(json.dumps(spec))
    (work / 'load.py').write_text(_SCRIPT)
    # -I: isolated mode (no cwd/PYTHONPATH on sys.path), run from the scratch folder.
    proc = subprocess.run([sys.executable, '-I', str(work / 'load.py'), str(work / 'spec.json')],
                          cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(work / 'results.pt')
