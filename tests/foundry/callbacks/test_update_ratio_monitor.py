"""``update_ratio_monitor``: exact against brute force in real runs, correct under sharding, configurable."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from composer.core import State
from composer.devices import DeviceCPU
from composer.loggers import Logger
from llmfoundry.command_utils import train

from tests.foundry.callbacks.helpers import ParamRecorder, find, in_memory, logged
from wesar_foundry.foundry.callbacks.update_ratio_monitor import UpdateRatioMonitor, find_or_create
from wesar_foundry.reparam import MultiplierMatrix, PlainMatrix, WeightNormMatrix, WeSaRMatrix

GATES = ('alpha', 'g', 'gamma', 'row_mult', 'col_mult')


def _norm2(t: torch.Tensor) -> float:
    return float((t.double() ** 2).sum())


def brute_force(rec: ParamRecorder, step: int, hf_model) -> dict[str, float]:
    """Every key the monitor logs with ``per_matrix: all``, from fp64 copies taken around optimizer.step()."""
    before, after = rec.before[step], rec.after[step]
    modules = {f'model.{n}': m for n, m in hf_model.reparam_modules().items()}
    entries: list[tuple[str, str, str | None, int | None, bool, float, float]] = []
    for name, old in before.items():
        mod, _, leaf = name.rpartition('.')
        m = modules.get(mod)
        kind = 'gate' if m is not None and leaf in GATES else 'raw'
        role = m.role if m is not None else None
        layer = int(name.split('layers.')[1].split('.')[0]) if 'layers.' in name else None
        entries.append((name, kind, role, layer, m is not None and leaf == 'weight',
                        _norm2(after[name] - old), _norm2(old)))
    for mod, m in modules.items():
        def eff(p):
            w = p[f'{mod}.weight']
            if isinstance(m, MultiplierMatrix):  # α·diag(r̂)·W·diag(ĉ), r̂ = r/rms(r)
                unit = lambda v: v / v.square().mean().sqrt()  # noqa: E731
                return p[f'{mod}.alpha'] * unit(p[f'{mod}.row_mult']).unsqueeze(1) * w * unit(p[f'{mod}.col_mult'])
            if isinstance(m, WeSaRMatrix):
                return p[f'{mod}.alpha'] * w
            if isinstance(m, WeightNormMatrix):
                return (p[f'{mod}.g'] / w.norm(dim=1)).unsqueeze(1) * w
            assert isinstance(m, PlainMatrix)
            return m.scale * w
        layer = int(mod.split('layers.')[1].split('.')[0]) if 'layers.' in mod else None
        entries.append((mod, 'effective', m.role, layer, True, _norm2(eff(after) - eff(before)), _norm2(eff(before))))

    out: dict[str, float] = {}
    pooled: dict[str, list[float]] = {}
    per_kind: dict[str, list[float]] = {}
    for name, kind, role, layer, is_matrix, num, den in entries:
        out[f'update_ratio/{kind}/matrix/{name}'] = math.sqrt(num / den)
        if not (is_matrix or kind == 'gate'):
            continue
        per_kind.setdefault(kind, []).append(math.sqrt(num / den))
        groups = [f'update_ratio/{kind}/role/{role}']
        if layer is not None and kind != 'gate':
            groups.append(f'update_ratio/{kind}/layer/{layer}')
        for g in groups:
            acc = pooled.setdefault(g, [0.0, 0.0])
            acc[0] += num
            acc[1] += den
    out.update({k: math.sqrt(n / d) for k, (n, d) in pooled.items()})
    for kind, rs in per_kind.items():
        if kind == 'gate':
            out['update_ratio/gate/max'] = max(rs)
            continue
        logs = [math.log(r) for r in rs]
        mean = sum(logs) / len(logs)
        out[f'update_ratio/{kind}/uniformity/max_over_min'] = max(rs) / min(rs)
        out[f'update_ratio/{kind}/uniformity/log_std'] = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
        out[f'update_ratio/{kind}/max'] = max(rs)
        out[f'update_ratio/{kind}/min'] = min(rs)
    return out


@pytest.mark.parametrize('reparam, offload', [('wesar', False), ('weight_norm', True), ('multipliers', False)])
def test_every_logged_value_matches_brute_force_in_a_real_run(train_cfg, reparam, offload):
    # WeSaR: scalar gates (the 'scaled' sums); Weight Normalization: per-row gains (the 'gained' sums);
    # multipliers (row_column): α, row and column vectors (the 'multiplied' sums).
    cfg = train_cfg('max_duration=6ba', 'scheduler.t_warmup=0ba', 'optimizer.lr=3e-3',
                    f'callbacks={{update_ratio_monitor: {{interval: 2, per_matrix: all, offload: {str(offload).lower()}}}, '
                    'test_param_recorder: {}}', reparam=reparam,
                    **({'multipliers': 'row_column'} if reparam == 'multipliers' else {}))
    trainer = train(cfg)
    rec = find(trainer, ParamRecorder)
    if reparam == 'multipliers':
        # Not vacuous: at the measured steps α, r, c and W of every matrix all move, and r, c are no
        # longer uniform (so r̂ ≠ 1 and ĉ ≠ 1 enter W̄).
        for mod in trainer.state.model.model.reparam_modules():
            for leaf in ('alpha', 'row_mult', 'col_mult', 'weight'):
                name = f'model.{mod}.{leaf}'
                assert not torch.equal(rec.before[4][name], rec.after[4][name]), name
            assert rec.before[4][f'model.{mod}.col_mult'].std() > 0 and rec.before[4][f'model.{mod}.row_mult'].std() > 0
    data = in_memory(trainer).data
    keys = {k for k in data if k.startswith('update_ratio/')}
    for step in (2, 4, 6):
        want = brute_force(rec, step, trainer.state.model.model)
        assert want and keys == set(want), (keys ^ set(want))  # full coverage, nothing extra
        for k, v in want.items():
            got = logged(trainer, k)[step]
            assert got == pytest.approx(v, rel=1e-6), k
            assert v > 0
    # Snapshots only before logging steps: nothing is logged for odd steps.
    assert sorted(logged(trainer, 'update_ratio/effective/role/down')) == [2, 4, 6]
    # The gates do move (so the effective ratio is not the raw one), by far less than the weights.
    gate = logged(trainer, 'update_ratio/gate/max')[6] if reparam == 'wesar' else None
    if gate is not None:
        assert 0 < gate < 0.1 * logged(trainer, 'update_ratio/raw/min')[6]
    assert find(trainer, UpdateRatioMonitor).held_bytes() == 0


def test_defaults_log_aggregates_and_the_last_layer_only(train_cfg):
    trainer = train(train_cfg('max_duration=10ba', 'callbacks={update_ratio_monitor: {}}'))
    keys = {k for k in in_memory(trainer).data if k.startswith('update_ratio/')}
    matrix_keys = {k for k in keys if '/matrix/' in k}
    assert matrix_keys and all('layers.1.' in k for k in matrix_keys)  # TINY_MODEL has 2 layers
    assert 'update_ratio/effective/matrix/model.model.layers.1.mlp.down_proj' in keys
    for role in ('emb', 'q', 'k', 'v', 'o', 'up', 'down', 'head'):
        assert f'update_ratio/effective/role/{role}' in keys
    assert {'update_ratio/effective/uniformity/max_over_min', 'update_ratio/raw/uniformity/log_std'} <= keys
    assert set(logged(trainer, 'update_ratio/effective/layer/0')) == {10}


def test_include_exclude_and_raw_only_select_what_is_measured(train_cfg):
    cfg = train_cfg('max_duration=2ba',
                    "callbacks={update_ratio_monitor: {interval: 1, measure: raw, per_matrix: all, "
                    "include: 'mlp', exclude: 'alpha$'}}")
    trainer = train(cfg)
    keys = {k for k in in_memory(trainer).data if k.startswith('update_ratio/')}
    matrix = {k.split('/matrix/')[1] for k in keys if '/matrix/' in k}
    assert matrix == {f'model.model.layers.{i}.mlp.{m}_proj.weight' for i in (0, 1) for m in ('up', 'down')}
    assert not any(k.startswith(('update_ratio/effective', 'update_ratio/gate')) for k in keys)
    assert {'update_ratio/raw/role/up', 'update_ratio/raw/role/down'} == {k for k in keys if '/role/' in k}


@pytest.mark.parametrize('kwargs, match', [
    ({'measure': 'weights'}, r"measure='weights'; allowed: raw, effective, both"),
    ({'per_matrix': 'some'}, r"per_matrix='some'; allowed: none, last_layer, all"),
    ({'include': '(unclosed'}, r'include=.*not a valid regular expression'),
    ({'interval': 0}, r'interval=0 must be an integer >= 1'),
    ({'intervall': 10}, r'unknown option\(s\) intervall; allowed: .*interval'),
])
def test_bad_options_fail_at_construction_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UpdateRatioMonitor(**kwargs)


def test_a_plain_hf_model_gets_roles_from_names_and_effective_equals_raw():
    # Any Composer model: a stock transformers Llama, trained by Composer's Trainer.
    from composer import Trainer
    from composer.loggers import InMemoryLogger
    from composer.models import HuggingFaceModel
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=32))
    model = HuggingFaceModel(hf, use_logits=True)
    ids = torch.randint(0, 64, (8, 16))
    data = torch.utils.data.DataLoader([{'input_ids': r, 'labels': r} for r in ids], batch_size=4)
    mem = InMemoryLogger()
    monitor = UpdateRatioMonitor(interval=1, per_matrix='all')
    rec = ParamRecorder()
    trainer = Trainer(model=model, train_dataloader=data, max_duration='2ba', callbacks=[monitor, rec],
                      loggers=[mem], optimizers=torch.optim.AdamW(model.parameters(), lr=1e-3), progress_bar=False)
    trainer.fit()
    keys = set(mem.data)
    for role in ('emb', 'q', 'k', 'v', 'o', 'gate', 'up', 'down', 'head'):
        assert f'update_ratio/raw/role/{role}' in keys
    name = 'model.model.layers.1.mlp.down_proj'
    b, a = rec.before[2][f'{name}.weight'], rec.after[2][f'{name}.weight']
    want = math.sqrt(_norm2(a - b) / _norm2(b))
    raw = dict((int(t.batch), v) for t, v in mem.data[f'update_ratio/raw/matrix/{name}.weight'])[2]
    eff = dict((int(t.batch), v) for t, v in mem.data[f'update_ratio/effective/matrix/{name}'])[2]
    assert raw == eff == pytest.approx(want, rel=1e-6)
    trainer.close()


# ---- the one monitor that loss_spike_monitor and gate_health_monitor read -----------------------

def _state(*callbacks) -> tuple[State, Logger]:
    state = State(model=torch.nn.Linear(4, 4), rank_zero_seed=0, run_name='r', device=DeviceCPU(),
                  callbacks=list(callbacks))
    return state, Logger(state)


def test_a_reader_takes_the_runs_monitor_when_it_measures_what_the_reader_needs():
    both, raw = UpdateRatioMonitor(), UpdateRatioMonitor(measure='raw')
    state, logger = _state(raw, both)
    assert find_or_create(state, logger, 'auto', 'reader', '', interval=1, history=1) == (raw, False)
    assert find_or_create(state, logger, 'monitor', 'reader', '', interval=1, history=1,
                          effective_only=True) == (both, False)
    assert find_or_create(state, logger, 'none', 'reader', '', interval=1, history=1) == (None, False)


def test_with_auto_and_no_suitable_monitor_a_reader_gets_a_private_started_one():
    state, logger = _state(UpdateRatioMonitor(measure='raw'))
    monitor, own = find_or_create(state, logger, 'auto', 'reader', '', interval=3, history=2, effective_only=True)
    assert own and monitor not in state.callbacks  # so it never logs
    assert (monitor.config.interval, monitor.config.history, monitor.config.measure) == (3, 2, 'effective')
    assert monitor.config.per_matrix == 'none' and monitor._items  # fit_start has planned what to measure


def test_with_monitor_and_none_in_the_run_a_reader_warns_naming_what_it_does_without(caplog):
    state, logger = _state()
    with caplog.at_level(logging.WARNING):
        assert find_or_create(state, logger, 'monitor', 'gate_health_monitor', 'the max_ratio check is off',
                              interval=1, history=1, effective_only=True) == (None, False)
    assert caplog.messages == ['gate_health_monitor: ratios=monitor but the run has no update_ratio_monitor '
                               'measuring effective matrices; the max_ratio check is off']
