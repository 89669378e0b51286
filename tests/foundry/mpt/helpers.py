"""Builders shared by the wesar_mpt tests: a tiny expressible MPT, the tiny YAML, a clean-process loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tests.helpers import batch, without_saving
from wesar_foundry.foundry.mpt.composer import WeSaRMPTComposerModel

MPT_YAML = Path(__file__).resolve().parents[3] / 'yamls' / 'tiny' / 'mpt.yaml'
TINY_MPT = {'d_model': 32, 'n_layers': 2, 'n_heads': 2, 'vocab_size': 512, 'max_seq_len': 32}
# What the tiny YAML sets beyond MPT's defaults: every model built here starts from it.
EXPRESSIBLE = {'tie_word_embeddings': False, 'no_bias': True,
               'attn_config': {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf'}}
INPUT_IDS = batch(seq=24, seed=3)['input_ids']


def build(**kwargs) -> WeSaRMPTComposerModel:
    """The registered ``wesar_mpt`` Composer model at the tiny size, expressible, on CPU."""
    return WeSaRMPTComposerModel(**{**TINY_MPT, **EXPRESSIBLE, **kwargs})


def mpt_cfg(tiny_data, run_name: str, *overrides: str, callbacks: dict | None = None):
    """The shipped tiny MPT YAML, shrunk, on ``tiny_data``, with dotlist overrides."""
    cfg = without_saving(OmegaConf.load(MPT_YAML))
    cfg.variables.data_local = str(tiny_data)
    cfg.variables.max_seq_len = TINY_MPT['max_seq_len']
    cfg.model.update(TINY_MPT)
    cfg.callbacks, cfg.loggers = callbacks or {}, {'inmemory': {}}
    base = ['eval_interval=5ba', 'eval_subset_num_batches=1', 'global_train_batch_size=8', 'device_train_batch_size=8',
            'device_train_microbatch_size=8', 'device_eval_batch_size=8', 'console_log_interval=100ba',
            'scheduler.t_warmup=2ba', 'optimizer.lr=3e-3', f'run_name={run_name}']
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))


_LOADER = r'''
import json, sys
import torch
from transformers import AutoModelForCausalLM
folder, inputs, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(input_ids=torch.load(inputs)).logits
ours = sorted(m for m in sys.modules if m.split('.')[0] in ('wesar_foundry', 'tests'))
torch.save({'class': type(model).__name__, 'model_type': model.config.model_type, 'logits': logits, 'ours': ours}, out)
'''


def load_in_clean_process(folder: Path, work: Path, inputs: torch.Tensor = INPUT_IDS) -> dict:
    """Load an exported folder with plain transformers (its own remote code) in a fresh, isolated process."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save(inputs, work / 'inputs.pt')
    (work / 'load.py').write_text(_LOADER)
    proc = subprocess.run([sys.executable, '-I', str(work / 'load.py'), str(folder), str(work / 'inputs.pt'),
                           str(work / 'out.pt')], cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(work / 'out.pt')
