"""``bench/gpu_check.py``, the one command for new GPUs, runs its CPU mode here so it cannot rot: the
same code as on GPUs (two ``composer`` ranks, FSDP2, activation checkpointing, ``torch.compile``,
llm-foundry's ``train()`` of the shipped 1.3B YAMLs shrunk by overrides, sharded save → export →
transformers), at the smallest shapes and fewest steps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'bench' / 'gpu_check.py'


def test_the_gpu_check_cpu_mode_trains_both_models_measures_them_and_checks_the_export(tiny_data, tmp_path):
    out = tmp_path / 'gpu_check.json'
    # tiny_data: vocab 512, samples of 32 tokens; the model's vocab is the tokenizer's.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), '--cpu', '--data', str(tiny_data), '--work', str(tmp_path / 'work'),
         '--out', str(out), '--layers', '2', '--d-model', '32', '--heads', '2', '--seq-len', '32',
         '--vocab-size', '512', '--microbatch', '4', '--accum', '2', '--warmup', '2', '--steps', '2',
         '--profile-steps', '1'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    report = json.loads(out.read_text())
    assert report['ok'] and all(c['ok'] for c in report['checks'])
    # The printed table and the JSON agree on what was checked.
    assert f'checks: {len(report["checks"])}/{len(report["checks"])} passed' in proc.stdout

    runs = report['runs']
    assert set(runs) == {'plain', 'wesar'}
    total = 2 + 2 + 1 + 1  # warm-up, timed, profiled, and the last step (save, export)
    for run in runs.values():
        assert run['steps_done'] == total and len(run['losses']) == total
        assert all(math.isfinite(x) for x in run['losses'])
        # The shipped GPU path, on two gloo ranks.
        assert run['fsdp'] == 'FSDP2Config' and run['sharded_params'] == run['params'] > 0
        assert run['checkpointed_layers'] == run['n_layers'] == 2
        assert run['compiled_graphs'] >= 1
        assert 0 < run['gated_share'] < 1
        assert 0 <= run['gate_work_share'] <= run['gated_share']
        for export in run['export'].values():
            assert export['ok'] and export['model_type'] == 'llama' and export['class'] == 'LlamaForCausalLM'
            assert export['rel_err'] <= report['logits_rtol']
        assert run['mfu'] is None  # no peak FLOPs for a CPU
    # Every WeSaR matrix goes through the gated ops; the plain model's embedding scale only.
    assert runs['wesar']['gated_share'] > runs['plain']['gated_share']

    for name in ('step_time_ratio', 'peak_memory_ratio', 'profiled_step_ratio'):
        value = report['ratios'][name]
        assert math.isfinite(value) and value > 0, (name, value)
