"""Runs under ``composer -n 2``: every registered init applied to a meta model sharded with
``fully_shard`` the way Composer's FSDP2 meta path does it (``to_empty`` then ``param_init_fn``,
module by module, children first) on CPU, then compared with a whole-module init of the same
weights. Rank 0 writes the comparison as JSON to ``argv[1]``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from tests.helpers import TINY_MODEL  # noqa: E402
from wesar_foundry.core.init_targets import target_std  # noqa: E402
from wesar_foundry.foundry.composer_models import WeSaRLlamaComposerModel  # noqa: E402

# name → model keys: every registered init (wesar_, he, small) and every reparam.
CASES = {
    'wesar': {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'target': 'he'}, 'mlp_type': 'swiglu'},
    'wesar-small-target': {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'target': 'small'}},
    'small': {'reparam': 'none', 'init_config': {'name': 'small'}},
    'he': {'reparam': 'none', 'init_config': {'name': 'he'}},
    'weight_norm': {'reparam': 'weight_norm', 'init_config': {'name': 'wesar_', 'sigma2': 16e-5}},
    'sigma_reparam': {'reparam': 'sigma_reparam', 'init_config': {'name': 'wesar_', 'sigma2': 16e-5}},
    'sigma_reparam-spectral': {'reparam': 'sigma_reparam', 'init_config': {'name': 'wesar_', 'sigma2': 16e-5},
                               'sigma_reparam_gamma_init': 'spectral'},
    'residual_scaling': {'reparam': 'residual_scaling', 'init_config': {'name': 'small'}},
}
# Bigger than the tiny model, so that weight stds are measured on enough numbers.
SIZE = {**TINY_MODEL, 'd_model': 64, 'n_heads': 4}


def meta_init_on_cpu(module: torch.nn.Module, init_fn) -> None:
    """Composer's ``param_init.meta_init`` with ``to_empty(device='cpu')`` for its hard-coded CUDA."""
    init_fn = getattr(module, 'param_init_fn', init_fn)
    for child in module.children():
        meta_init_on_cpu(child, init_fn)
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    if not any(t.is_meta for t in tensors):
        return
    assert all(isinstance(p, DTensor) for p in module.parameters(recurse=False))
    module.to_empty(device='cpu', recurse=False)
    init_fn(module)


def whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def compare(name: str, kwargs: dict, mesh) -> dict:
    torch.manual_seed(17)
    sharded = WeSaRLlamaComposerModel(init_device='meta', **SIZE, **kwargs).model
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    meta_init_on_cpu(sharded, sharded.param_init_fn)
    got = {n: whole(t) for n, t in [*sharded.named_parameters(), *sharded.named_buffers()]}
    dtensors = sum(isinstance(p, DTensor) for p in sharded.parameters())

    # The same weights, initialized whole: every deterministic part must come out the same.
    cm = WeSaRLlamaComposerModel(init_device='cpu', **SIZE, **kwargs)
    cfg, ref = cm.options, cm.model
    stds = {}
    for mname, m in ref.reparam_modules().items():
        target = target_std(m.role, cfg.init_target, cfg.d_model, cfg.n_layers, m.in_features if m.kind == 'linear' else None)
        with torch.no_grad():
            m.weight.copy_(got[f'{mname}.weight'])
        m.init_gains_(target, cfg.sigma)
        w = got[f'{mname}.weight']
        stds[mname] = {'std': w.std().item(), 'want': m.stored_std(target, cfg.sigma), 'numel': w.numel()}
    want = {n: t.detach() for n, t in [*ref.named_parameters(), *ref.named_buffers()]}
    diffs = {n: (got[n] - want[n]).abs().max().item() / max(want[n].abs().max().item(), 1e-30) for n in want}
    return {'keys_equal': sorted(got) == sorted(want), 'dtensor_params': dtensors, 'params': len(list(ref.parameters())),
            'rel_diff': diffs, 'stds': stds, 'finite': all(bool(torch.isfinite(t).all()) for t in got.values())}


def main(out: str) -> None:
    dist.init_process_group('gloo')
    mesh = init_device_mesh('cpu', (dist.get_world_size(),))
    results = {name: compare(name, kwargs, mesh) for name, kwargs in CASES.items()}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results, indent=1, default=lambda x: None if math.isnan(x) else x))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1])
