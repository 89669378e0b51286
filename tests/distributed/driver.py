"""Runs under ``composer -n 2``: llm-foundry's ``train()`` for each job of a JSON spec, then saves
what the tests compare (logged metrics, the monitors' state, logits of the trained model).

A job: ``{"reparam", "overrides", "cwd", "out"}`` and optionally ``"yaml"``; ``overrides`` is a dotlist
for that YAML (default: the paper YAML of ``reparam``).
Two test-only callbacks are registered here:

- ``test_gloo_grad_average``: torch 2.7's FSDP2 asks reduce-scatter for AVG, which gloo answers
  with the *sum* (pytorch issue 162338), so on CPU gradients come out ``world_size`` times too
  large. This divides them by the world size right after backward (before clipping and the
  optimizer), which is what NCCL's AVG gives on GPUs. It requires one microbatch per step.
- ``test_preempt``: SIGKILLs the whole job (launcher and every rank) at the start of a given step,
  once (a marker file remembers it): a preemption, not a clean exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from composer.core import Callback, State  # noqa: E402
from composer.loggers import Logger  # noqa: E402
from composer.utils import dist  # noqa: E402
from llmfoundry.command_utils import train  # noqa: E402
from llmfoundry.registry import callbacks  # noqa: E402

from tests.distributed.configs import load  # noqa: E402

INPUT_SEED = 5


class GlooGradAverage(Callback):
    def after_backward(self, state: State, logger: Logger) -> None:
        world = dist.get_world_size()
        if world == 1 or torch.distributed.get_backend() != 'gloo':
            return
        if state.device_train_microbatch_size != state.batch['input_ids'].shape[0]:
            raise RuntimeError('test_gloo_grad_average needs one microbatch per step')
        for p in state.model.parameters():
            if p.grad is not None:
                p.grad.div_(world)


class Preempt(Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = int(step), Path(marker)

    def batch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 == self.step and dist.get_global_rank() == 0 and not self.marker.exists():
            self.marker.write_text(str(self.step))
            os.killpg(os.getpgrp(), signal.SIGKILL)


callbacks.register('test_gloo_grad_average', func=GlooGradAverage)
callbacks.register('test_preempt', func=Preempt)


def input_ids(vocab: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(INPUT_SEED))


def collect(trainer) -> dict:
    """Logged metrics {key: {step: value}}, the monitors' checkpointed state, and final logits."""
    mem = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
    metrics = {k: {int(ts.batch): float(v) for ts, v in vals} for k, vals in mem.data.items()
               if isinstance(vals[0][1], (int, float)) or getattr(vals[0][1], 'numel', lambda: 0)() == 1}
    states = {type(cb).__name__: cb.state_dict() for cb in trainer.state.callbacks
              if type(cb).__name__ in ('LossSpikeMonitor', 'UpdateRatioMonitor')}
    model = trainer.state.model
    model = getattr(model, 'module', model)  # a DDP run's ComposerModel
    params = list(model.parameters())
    # Counted before the forward below: FSDP2 keeps the root's parameters unsharded after one.
    sharded = sum(hasattr(p, 'to_local') for p in params)
    dtypes = sorted({str(p.dtype) for p in params})
    cfg = model.model.config
    ids = input_ids(cfg.vocab_size, 24)
    model.eval()
    with torch.no_grad():
        logits = model.model(input_ids=ids).logits.float()
    return {'metrics': metrics, 'states': states, 'input_ids': ids, 'logits': logits,
            'world_size': dist.get_world_size(),
            'checkpointed_layers': sum(type(m).__name__ == 'CheckpointWrapper' for m in model.modules()),
            'sharded_params': sharded, 'params': len(params), 'param_dtypes': dtypes}


def main(spec: str) -> None:
    for job in json.loads(Path(spec).read_text()):
        Path(job['cwd']).mkdir(parents=True, exist_ok=True)
        os.chdir(job['cwd'])
        trainer = train(load(job['reparam'], job['overrides'], job.get('yaml')))
        out = collect(trainer)
        trainer.close()
        if dist.get_global_rank() == 0:
            Path(job['out']).mkdir(parents=True, exist_ok=True)
            torch.save(out, Path(job['out']) / 'result.pt')
        dist.barrier()


if __name__ == '__main__':
    main(sys.argv[1])
