"""``wesar-foundry coord-check``: does a YAML's training dynamics stay flat across width (and depth)?

The coordinate check of μP (Yang et al. 2022, ``microsoft/mup``'s ``coord_check``), on a user's own
llm-foundry YAML: for each width (and depth) the YAML's model is resized and trained a few steps
through llm-foundry's real ``train()``, with the YAML's data loader, optimizer, algorithms and
precision. Per matrix role it records

- the **update ratio** ‖W_t − W_{t−1}‖ / ‖W_{t−1}‖ of ``update_ratio_monitor`` (interval 1; its
  per-role pooled aggregates, effective matrices W̄ and stored weights);
- the **activation RMS**: the RMS of each matrix's output (forward hooks on the reparameterized
  matrices, role from the matrix itself, as the monitor reads it), averaged over the matrices of a
  role. The activation of step t is that of step t's forward, i.e. with the weights after t − 1
  updates (step 1: the init), as ``mup``'s coordinate check records them.

and fits, per role, the slope of ln(value) against ln(width) (``core.coords``): under a
parameterization that transfers across width the slopes are near 0.

What is changed in the YAML, for every run: the model's width and depth (below); ``max_duration``
= the steps; the lr schedule is replaced by a constant lr at ``optimizer.lr`` from the first step
(a warmup would make step 1's lr 0, and a few steps of a long schedule are its warmup anyway); eval,
checkpoints, loading, exports, FSDP and every callback are removed (the monitor and the
activation probe are the only callbacks); the loggers are one in-memory logger; the seed is
``--seed``. One process: on CPU the YAML needs ``precision: fp32`` (pass ``precision=fp32``).

Width per family, head dim kept (the YAML model's d / n_heads): ``wesar_llama``: ``d_model``,
``n_heads`` = d / head dim, the MLP through its ``expansion_ratio`` as is; ``wesar_hf``:
``config_overrides.hidden_size``, ``num_attention_heads`` = d / head dim, ``num_key_value_heads``
keeping the YAML's heads per kv head, ``intermediate_size`` scaled in proportion to the width.
Depth: ``n_layers`` / ``num_hidden_layers``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wesar_foundry.core.coords import RULE, Drift, drifts, rms, role_means
from wesar_foundry.core.init_targets import MATRIX_ROLES

FAMILIES = ('wesar_llama', 'wesar_hf')
# What is plotted and flagged: effective update ratios and activation RMS. Raw ratios (stored
# weights) and gate ratios are in the JSON too.
QUANTITIES = {
    'update_ratio': 'update ratio ‖ΔW̄‖/‖W̄‖ (effective matrices)',
    'activation_rms': "RMS of the matrix's output",
}
RAW = 'update_ratio_raw'
PROBE = 'wesar_coord_check_activations'  # registered in llm-foundry's callbacks registry when a check runs
# Keys of a train config that would evaluate, save, load or export: a coordinate check does none.
REMOVED_KEYS = ('eval_loader', 'eval_loaders', 'icl_tasks', 'icl_tasks_str', 'eval_gauntlet', 'eval_gauntlet_str',
                'save_folder', 'save_interval', 'save_num_checkpoints_to_keep', 'save_overwrite', 'save_filename',
                'save_latest_filename', 'save_weights_only', 'save_ignore_keys', 'load_path', 'load_weights_only',
                'load_strict_model_weights', 'load_ignore_keys', 'fsdp_config', 'tp_config', 'profiler',
                'eval_subset_num_batches')


@dataclass
class CoordCheckConfig:
    """What ``wesar-foundry coord-check`` runs."""

    yaml: str
    """The llm-foundry train YAML (model ``wesar_llama`` or ``wesar_hf``)."""
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    """Model widths d (at least two); each a multiple of the YAML model's head dim."""
    depths: list[int] | None = None
    """Decoder layer counts; None: the YAML's."""
    steps: int = 5
    """Optimizer steps per run (at least 2: step 1 and a later one are reported)."""
    seed: int = 17
    """The runs' seed (the same for every width)."""
    tol: float = 0.25
    """A role drifts when |slope of ln(value) against ln(width)| exceeds this."""
    out: str = 'coord-check'
    """Output folder: coords.json and the plots."""
    overrides: list[str] = field(default_factory=list)
    """Dotlist overrides applied to the YAML (key=value), as ``llmfoundry train`` takes them."""

    def validate(self) -> None:
        """Refuse options that need no YAML to be wrong."""
        if len(self.widths) < 2 or len(set(self.widths)) != len(self.widths):
            raise ValueError(f'--widths {_csv(self.widths)}: give at least two different widths (a slope needs two)')
        if any(w < 1 for w in self.widths):
            raise ValueError(f'--widths {_csv(self.widths)}: every width must be >= 1')
        if self.depths is not None and (not self.depths or any(n < 1 for n in self.depths)
                                        or len(set(self.depths)) != len(self.depths)):
            raise ValueError(f'--depths {_csv(self.depths)}: give different layer counts, each >= 1')
        if self.steps < 2:
            raise ValueError(f'--steps {self.steps}: must be >= 2 (step 1 and the last step are compared)')
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f'--tol {self.tol}: must be a number > 0')
        bad = [o for o in self.overrides if '=' not in o]
        if bad:
            raise ValueError(f'override(s) {", ".join(bad)}: expected key=value (e.g. precision=fp32)')
        if not Path(self.yaml).is_file():
            raise FileNotFoundError(f'{self.yaml}: no such YAML file')


def _csv(xs) -> str:
    return ','.join(str(x) for x in xs)


def _say(msg: str) -> None:
    print(f'[coord-check] {msg}', flush=True)


# ---- the YAML's model, resized -----------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """The width-related sizes of the YAML's model."""

    model: str
    """wesar_llama or wesar_hf."""
    width: int
    """d_model / hidden_size."""
    depth: int
    """n_layers / num_hidden_layers."""
    head_dim: int
    """Kept fixed across widths."""
    heads_per_kv: int = 1
    """wesar_hf: attention heads per key/value head (1 without grouped-query attention)."""
    intermediate: int | None = None
    """wesar_hf: the MLP's hidden size (scaled in proportion to the width)."""
    has_kv_heads: bool = False
    """wesar_hf: whether the family's config has num_key_value_heads."""


def load_config(cfg: CoordCheckConfig):
    """The YAML with the dotlist overrides merged in (an OmegaConf DictConfig)."""
    from omegaconf import OmegaConf
    base = OmegaConf.load(cfg.yaml)
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(cfg.overrides)))


def _model_kwargs(train_cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf
    model = OmegaConf.to_container(train_cfg.model, resolve=True)
    return {k: v for k, v in model.items() if k not in ('name', 'init_device')}


def read_shape(train_cfg) -> Shape:
    """The YAML model's shape, its options checked as the model would check them (before any training)."""
    name = train_cfg.get('model', {}).get('name')
    if name not in FAMILIES:
        raise ValueError(f'model.name={name!r}: coord-check resizes {" and ".join(FAMILIES)} models only; allowed: '
                         f'{", ".join(FAMILIES)}')
    kwargs = _model_kwargs(train_cfg)
    if name == 'wesar_llama':
        from wesar_foundry.models.llama_config import WeSaRLlamaOptions
        o = WeSaRLlamaOptions.from_kwargs(kwargs)
        return Shape(name, o.d_model, o.n_layers, o.d_model // o.n_heads)
    from wesar_foundry.models.hf import WeSaRHFOptions, build_hf_config
    c = build_hf_config(WeSaRHFOptions.from_kwargs(kwargs))
    heads = c.num_attention_heads
    head_dim = getattr(c, 'head_dim', None) or c.hidden_size // heads
    kv = getattr(c, 'num_key_value_heads', None)
    return Shape(name, c.hidden_size, c.num_hidden_layers, head_dim, heads_per_kv=max(1, heads // (kv or heads)),
                 intermediate=getattr(c, 'intermediate_size', None), has_kv_heads=kv is not None)


def check_sizes(shape: Shape, widths: list[int]) -> None:
    """Refuse widths that cannot keep the head dim (smaller than it, or not a multiple of it)."""
    small = [w for w in widths if w < shape.head_dim]
    if small:
        raise ValueError(f'--widths {_csv(small)}: smaller than the head dim {shape.head_dim} of the YAML\'s model '
                         f'(d {shape.width} / heads); the head dim is kept, so every width must be >= {shape.head_dim}')
    odd = [w for w in widths if w % shape.head_dim]
    if odd:
        raise ValueError(f'--widths {_csv(odd)}: not a multiple of the head dim {shape.head_dim} of the YAML\'s model '
                         '(heads = width / head dim, the head dim kept)')


def resized_model(model: dict[str, Any], shape: Shape, width: int, depth: int) -> dict[str, Any]:
    """The ``model:`` section at ``width`` and ``depth`` (see the module docstring for each family)."""
    model = copy.deepcopy(model)
    heads = max(1, width // shape.head_dim)
    if shape.model == 'wesar_llama':
        model.update(d_model=width, n_heads=heads, n_layers=depth)
        return model
    over = dict(model.get('config_overrides') or {})
    over.update(hidden_size=width, num_attention_heads=heads, num_hidden_layers=depth)
    if shape.has_kv_heads:
        kv = max(1, heads // shape.heads_per_kv)
        while heads % kv:
            kv -= 1
        over['num_key_value_heads'] = kv
    if shape.intermediate is not None:
        over['intermediate_size'] = max(1, round(shape.intermediate * width / shape.width))
    model['config_overrides'] = over
    return model


def run_config(train_cfg, shape: Shape, width: int, depth: int, cfg: CoordCheckConfig):
    """The train config of one run: the YAML resized, trained ``cfg.steps`` steps at a constant lr, nothing saved."""
    from omegaconf import OmegaConf
    run = OmegaConf.to_container(train_cfg, resolve=True)
    for key in REMOVED_KEYS:
        run.pop(key, None)
    run['model'] = resized_model(run['model'], shape, width, depth)
    run.update(
        run_name=f'coord-check-w{width}-n{depth}', seed=cfg.seed, max_duration=f'{cfg.steps}ba',
        scheduler={'name': 'constant_with_warmup', 't_warmup': '0ba'},
        eval_interval=1, eval_first=False, autoresume=False,  # 1: Composer's default, no warning without eval
        callbacks={'update_ratio_monitor': {'interval': 1, 'measure': 'both', 'per_matrix': 'none',
                                            'history': cfg.steps},
                   PROBE: {}},
        loggers={'inmemory': {}},
        progress_bar=False, log_to_console=False, python_log_level='warning', log_config=False,
    )
    run.pop('variables', None)  # resolved above
    return OmegaConf.create(run)


# ---- the activation probe ----------------------------------------------------------------------

@functools.cache
def probe_class() -> type:
    """The Composer callback recording each matrix's output RMS per step (built on first use: the
    CLI imports no framework until a subcommand runs)."""
    import torch
    from composer.core import Callback

    from wesar_foundry.reparam import ReparamMatrix

    class ActivationProbe(Callback):
        """Forward hooks on every reparameterized matrix: Σ out², element count, per training step;
        at the end of a step, the per-role mean of the matrices' RMS (``rms[step][role]``)."""

        def __init__(self) -> None:
            self.roles: dict[str, str] = {}
            self.rms: dict[int, dict[str, float]] = {}
            self._sums: dict[str, list] = {}
            self._handles: list = []

        def fit_start(self, state, logger) -> None:
            for name, module in state.model.named_modules():
                if isinstance(module, ReparamMatrix):  # the monitor's role lookup: the matrix's own role
                    self.roles[name] = module.role
                    self._handles.append(module.register_forward_hook(self._hook(name)))

        def _hook(self, name: str):
            @torch.no_grad()
            def hook(module, inputs, output) -> None:
                if not module.training:
                    return
                out = output.detach()
                ss = torch.linalg.vector_norm(out, dtype=torch.float32) ** 2  # no fp32 copy of the logits
                acc = self._sums.setdefault(name, [0.0, 0])
                acc[0] = acc[0] + ss.double()  # a tensor: no device sync per matrix
                acc[1] += out.numel()
            return hook

        def batch_end(self, state, logger) -> None:
            per_matrix = {n: rms(float(ss), count) for n, (ss, count) in self._sums.items()}
            self.rms[int(state.timestamp.batch)] = role_means(per_matrix, self.roles)
            self._sums = {}

        def fit_end(self, state, logger) -> None:
            for h in self._handles:
                h.remove()
            self._handles = []

    return ActivationProbe


def _register_probe() -> type:
    from llmfoundry.registry import callbacks
    cls = probe_class()
    callbacks.register(PROBE, func=cls)
    return cls


# ---- one run -----------------------------------------------------------------------------------

def _roles_in_order(roles) -> list[str]:
    return sorted(set(roles), key=lambda r: MATRIX_ROLES.index(r) if r in MATRIX_ROLES else len(MATRIX_ROLES))


def train_one(run_cfg) -> dict[str, Any]:
    """Train one resized config; per role and step its update ratios and activation RMS, the loss, the time."""
    from llmfoundry.command_utils import train

    from wesar_foundry.foundry.callbacks.update_ratio_monitor import UpdateRatioMonitor
    probe_cls = _register_probe()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Composer warns of a zero warmup, which is what the constant schedule asks for.
        warnings.filterwarnings('ignore', message='The warmup duration is 0')
        trainer = train(copy.deepcopy(run_cfg))
    seconds = time.perf_counter() - t0
    callbacks = trainer.state.callbacks
    monitor = next(cb for cb in callbacks if isinstance(cb, UpdateRatioMonitor))
    probe = next(cb for cb in callbacks if isinstance(cb, probe_cls))
    logger = next(d for d in trainer.logger.destinations if type(d).__name__ == 'InMemoryLogger')
    roles = _roles_in_order(probe.roles.values())
    measured = {m.step: m.metrics for m in monitor.history}
    steps = sorted(measured)

    def series(kind: str) -> dict[str, list[float]]:
        return {r: [measured[s].get(f'update_ratio/{kind}/role/{r}', math.nan) for s in steps] for r in roles}

    gates = {r: v for r, v in series('gate').items() if any(math.isfinite(x) for x in v)}
    return {
        'seconds': seconds,
        'steps': steps,
        'roles': roles,
        'matrices': dict(probe.roles),
        'loss': [float(v) for _, v in logger.data.get('loss/train/total', [])],
        'update_ratio': series('effective'),
        RAW: series('raw'),
        'update_ratio_gate': gates,
        'activation_rms': {r: [probe.rms.get(s, {}).get(r, math.nan) for s in steps] for r in roles},
        # The monitor's other aggregates (per layer, uniformity, max, min); the per-role ones are above.
        'monitor_metrics': {str(s): {k: v for k, v in measured[s].items() if '/role/' not in k} for s in steps},
    }


# ---- the drift over widths (and depths) ----------------------------------------------------------

def drift_entries(runs: list[dict[str, Any]], axis: str, tol: float) -> list[dict[str, Any]]:
    """Per quantity, step (first, last), the other axis' value and role: the values along ``axis``
    ('width' or 'depth'), their slope and status."""
    other = 'depth' if axis == 'width' else 'width'
    out = []
    for quantity in (*QUANTITIES, RAW):
        for fixed in sorted({r[other] for r in runs}):
            group = [r for r in runs if r[other] == fixed]
            if len({r[axis] for r in group}) < 2:
                continue
            for which in ('first', 'last'):
                values: dict[str, dict[int, float]] = {}
                for r in group:
                    i = 0 if which == 'first' else -1
                    for role, vals in r[quantity].items():
                        values.setdefault(role, {})[r[axis]] = vals[i]
                values = {role: v for role, v in values.items() if len(v) == len(group)}
                step = group[0]['steps'][0 if which == 'first' else -1]
                for role, d in drifts(values, tol).items():
                    out.append({'quantity': quantity, 'step': step, 'which': which, other: fixed, 'axis': axis,
                                'role': role, 'values': {str(k): v for k, v in sorted(values[role].items())},
                                'slope': d.slope, 'status': d.status, 'flagged': d.flagged})
    return out


def table(entries: list[dict[str, Any]], axis: str, tol: float) -> str:
    """The slopes per role (rows) and quantity × step (columns), one block per fixed depth (or width)."""
    other = 'depth' if axis == 'width' else 'width'
    shown = [e for e in entries if e['axis'] == axis and e['quantity'] in QUANTITIES]
    lines = []
    for fixed in sorted({e[other] for e in shown}):
        block = [e for e in shown if e[other] == fixed]
        cols = list(dict.fromkeys((e['quantity'], e['which'], e['step']) for e in block))
        roles = _roles_in_order(e['role'] for e in block)
        cell = {(e['role'], e['quantity'], e['which']): e for e in block}
        head = ['role'] + [f'{"update ratio" if q == "update_ratio" else "act. RMS"} @{s}' for q, _, s in cols]
        lines.append(f'slope of ln(value) against ln({axis}) at {other} {fixed}; * = |slope| > {tol:g} (drifts)')
        lines.append('| ' + ' | '.join(head) + ' |')
        lines.append('|' + '---|' * len(head))
        for role in roles:
            row = [role]
            for q, which, _ in cols:
                e = cell.get((role, q, which))
                row.append('' if e is None else 'no fit' if e['status'] == 'no fit'
                           else f'{e["slope"]:+.2f}{"*" if e["flagged"] else ""}')
            lines.append('| ' + ' | '.join(row) + ' |')
        for q, which, step in cols:
            flagged = [e['role'] for e in block if e['quantity'] == q and e['which'] == which and e['flagged']]
            lines.append(f'  {QUANTITIES[q]}, step {step}: '
                         + (f'drifts with {axis}: {", ".join(flagged)}' if flagged else f'flat in {axis} (every role)'))
        lines.append('')
    return '\n'.join(lines).rstrip()


# ---- plots ---------------------------------------------------------------------------------------

def plot(runs: list[dict[str, Any]], entries: list[dict[str, Any]], quantity: str, out: Path, title: str,
         tol: float) -> list[Path]:
    """``<out>/coords-<quantity>.png/.svg``: value against width (log-log), one line per role, one
    panel per step (first, last) and per depth; the legend gives each role's slope."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (used as matplotlib.ticker)

    depths = sorted({r['depth'] for r in runs})
    fig, axes = plt.subplots(len(depths), 2, figsize=(12, 4 * len(depths)), squeeze=False, constrained_layout=True)
    for row, depth in enumerate(depths):
        group = sorted((r for r in runs if r['depth'] == depth), key=lambda r: r['width'])
        roles = _roles_in_order(role for r in group for role in r[quantity])
        for col, which in enumerate(('first', 'last')):
            ax = axes[row][col]
            i = 0 if which == 'first' else -1
            slopes = {e['role']: e for e in entries if e['quantity'] == quantity and e['which'] == which
                      and e['axis'] == 'width' and e['depth'] == depth}
            for j, role in enumerate(roles):
                pts = [(r['width'], r[quantity][role][i]) for r in group if role in r[quantity]]
                pts = [(w, v) for w, v in pts if math.isfinite(v) and v > 0]
                if not pts:
                    continue
                e = slopes.get(role)
                label = role if e is None or e['status'] == 'no fit' else \
                    f'{role} ({e["slope"]:+.2f}{"*" if e["flagged"] else ""})'
                ax.plot([w for w, _ in pts], [v for _, v in pts], marker='o', ms=3, lw=1.2,
                        ls='-' if j < 10 else '--', color=f'C{j % 10}', label=label)
            ax.set_xscale('log', base=2)
            ax.set_yscale('log')
            ax.set_xticks([r['width'] for r in group], [str(r['width']) for r in group])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the widths run are labelled
            ax.set_xlabel('width d')
            step = group[0]['steps'][i]
            ax.set_title(f'step {step}' + (f', {depth} layers' if len(depths) > 1 else ''), fontsize=10)
            ax.set_ylabel(QUANTITIES[quantity])
            ax.legend(fontsize=7, title='role (slope)', title_fontsize=7, loc='center left', bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f'{title}\nlegend: slope of ln(value) against ln(width); * = |slope| > {tol:g}', fontsize=10)
    paths = []
    for suffix in ('.png', '.svg'):
        path = out / f'coords-{quantity}{suffix}'
        tmp = path.with_name(f'.{path.stem}.tmp-{os.getpid()}{suffix}')  # the suffix picks the format
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
        paths.append(path)
    plt.close(fig)
    return paths


# ---- the command ---------------------------------------------------------------------------------

def _json(obj: Any) -> str:
    # nan is written as null: the file stays strict JSON. Six significant digits: a third of the size.
    def clean(x):
        if isinstance(x, float):
            return float(f'{x:.6g}') if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=1)


def describe(train_cfg) -> str:
    """One line naming the YAML's method: model, reparam, init."""
    from omegaconf import OmegaConf
    model = OmegaConf.to_container(train_cfg.model, resolve=True)
    init = model.get('init_config') or {}
    bits = [model.get('name'), f'reparam {model.get("reparam", "wesar")}', f'init {init.get("name", "wesar_")}']
    if init.get('name', 'wesar_') == 'wesar_':
        bits.append(f'target {init.get("target", "he")}, sigma2 {init.get("sigma2", 4e-5)}')
    lr = OmegaConf.select(train_cfg, 'optimizer.lr')
    return ', '.join(str(b) for b in bits) + (f', lr {lr:g}' if isinstance(lr, (int, float)) else '')


def run_coord_check(cfg: CoordCheckConfig) -> dict[str, Any]:
    """Check every option and size, train each width × depth, write coords.json and the plots, print the table."""
    from wesar_foundry.files.atomic import write_text

    cfg.validate()
    train_cfg = load_config(cfg)
    shape = read_shape(train_cfg)
    check_sizes(shape, cfg.widths)
    depths = cfg.depths or [shape.depth]
    plan = [(w, n) for n in depths for w in sorted(cfg.widths)]
    configs = [run_config(train_cfg, shape, w, n, cfg) for w, n in plan]  # every config built before any training
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    what = describe(train_cfg)
    _say(f'{cfg.yaml} ({what}): {len(plan)} runs of {cfg.steps} steps, widths {_csv(sorted(cfg.widths))}, '
         f'depths {_csv(depths)}, head dim {shape.head_dim}')

    from omegaconf import OmegaConf
    result: dict[str, Any] = {
        'options': asdict(cfg), 'method': what, 'rule': f'{RULE}; tol = {cfg.tol:g}',
        'quantities': {**QUANTITIES, RAW: 'update ratio ‖ΔW‖/‖W‖ of the stored weights',
                       'update_ratio_gate': 'update ratio of the gates (gated methods)'},
        'definitions': {
            'update_ratio': 'update_ratio_monitor (interval 1): per role, pooled √(Σ‖ΔW‖²/Σ‖W‖²) over its '
                            'matrices; step t compares the weights after step t with those before it',
            'activation_rms': "per matrix √(mean of its output²) over step t's training forward (weights after "
                              't − 1 updates; step 1 is the init), then the mean over the matrices of the role',
            'schedule': 'constant lr at optimizer.lr from step 1 (the YAML\'s scheduler is replaced)',
        },
        'shape': asdict(shape), 'runs': [],
    }
    start = time.perf_counter()
    for i, ((width, depth), run_cfg) in enumerate(zip(plan, configs), 1):
        _say(f'run {i}/{len(plan)}: width {width}, depth {depth}, {cfg.steps} steps')
        measured = train_one(run_cfg)
        run = {'width': width, 'depth': depth, **measured, 'config': OmegaConf.to_container(run_cfg)}
        result['runs'].append(run)
        loss = measured['loss']
        _say(f'  width {width}, depth {depth}: {measured["seconds"]:.1f} s'
             + (f', loss {loss[0]:.3f} → {loss[-1]:.3f}' if loss else ''))
        write_text(out / 'coords.json', _json(result))  # what ran so far survives an interruption
    runs = result['runs']
    entries = drift_entries(runs, 'width', cfg.tol)
    if len(depths) > 1:
        entries += drift_entries(runs, 'depth', cfg.tol)
    result['drift'] = entries
    result['seconds'] = time.perf_counter() - start
    title = f'{Path(cfg.yaml).name}: {what}'
    result['figures'] = [str(p) for q in QUANTITIES for p in plot(runs, entries, q, out, title, cfg.tol)]
    text = table(entries, 'width', cfg.tol)
    if len(depths) > 1:
        text += '\n\n' + table(entries, 'depth', cfg.tol)
    result['table'] = text
    write_text(out / 'coords.json', _json(result))
    print(text)
    _say(f'wrote {out / "coords.json"} and {len(result["figures"])} figures ({result["seconds"] / 60:.1f} min)')
    return result
