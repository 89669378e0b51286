"""``wesar-foundry eval``: the paper's two metrics on an exported (stock transformers) HF folder, through
lm-eval-harness's own API and tasks.

- WikiText: word perplexity over whole articles, lm-eval's ``wikitext`` task.
- LAMBADA: perplexity of the target word, lm-eval's ``lambada_openai`` task.

Online, the stock hub-backed tasks run by name (``--tasks wikitext,lambada_openai``). Offline,
``--wikitext-file`` / ``--lambada-file`` run the task configs of ``wesar_foundry/commands/eval_tasks/``
(package data; ``yamls/eval`` in a checkout links to it): the same
processing and metrics, reading local files in the standard formats. Their data paths are filled
in at run time into a temporary include folder handed to lm-eval's ``TaskManager``; the shipped
files are never edited (a file whose placeholder is gone is refused: editing it in would make the
command's fill-in a silent no-op). For plain ``lm_eval --include_path``, ``--write-tasks DIR``
writes the filled-in copies to DIR and prints the ``lm_eval`` command instead of evaluating.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wesar_foundry.files.atomic import staged_dir, write_text

# The shipped task configs: package data, so that a non-editable install (`pip install .`, a wheel) has them.
TASK_DIR = Path(__file__).resolve().parent / 'eval_tasks'
STOCK_TASKS = ('wikitext', 'lambada_openai', 'lambada_standard')
DEFAULT_TASKS = ('wikitext', 'lambada_openai')
DTYPES = ('float32', 'bfloat16', 'float16', 'auto')


@dataclass(frozen=True)
class LocalTask:
    """One task config of ``eval_tasks/`` and the placeholder its data path replaces."""

    name: str
    """The lm-eval task name the YAML declares."""
    yaml: str
    """File name in the task folder."""
    placeholder: str
    """Text in the YAML that the data file's path replaces."""
    option: str
    """The command-line option that supplies the file (for error messages)."""


LOCAL_TASKS = {
    'wikitext': LocalTask('wikitext_local', 'wikitext_local.yaml', '__WIKITEXT_FILE__', '--wikitext-file'),
    'lambada': LocalTask('lambada_openai_local', 'lambada_openai_local.yaml', '__LAMBADA_FILE__', '--lambada-file'),
}
TASK_UTILS = 'wesar_eval_utils.py'

# What the table shows per task, in order (lm-eval reports '<metric>,<filter>' keys).
METRICS = {
    'wikitext': ('word_perplexity', 'byte_perplexity', 'bits_per_byte'),
    'wikitext_local': ('word_perplexity', 'byte_perplexity', 'bits_per_byte'),
    'lambada_openai': ('perplexity', 'acc'),
    'lambada_standard': ('perplexity', 'acc'),
    'lambada_openai_local': ('perplexity', 'acc'),
}


@dataclass
class EvalConfig:
    """Options of ``wesar-foundry eval``."""

    model_dir: str | None
    """An exported HF model folder (config.json, weights and tokenizer), e.g. from ``wesar-foundry export``
    (optional with ``write_tasks``: then only named in the printed command)."""
    tasks: tuple[str, ...] = ()
    """Stock hub-backed lm-eval tasks (need the network or a datasets cache); default: wikitext,
    lambada_openai when no local file is given."""
    wikitext_file: str | None = None
    """A local WikiText split file (wiki.test.tokens / wiki.test.raw) for the wikitext_local task."""
    lambada_file: str | None = None
    """A local LAMBADA jsonl ({"text"} or {"context","continuation"}) for lambada_openai_local."""
    batch_size: int = 8
    """Sequences per forward pass."""
    device: str = 'cpu'
    """torch device for the model (cpu, cuda, cuda:0, ...)."""
    dtype: str = 'float32'
    """Model dtype: float32, bfloat16, float16, or auto (the checkpoint's)."""
    max_length: int | None = None
    """Context window for the rolling WikiText windows (default: the model's max_position_embeddings)."""
    limit: int | None = None
    """Evaluate only the first N documents of each task (for quick checks; not the paper's number)."""
    task_dir: str = str(TASK_DIR)
    """Folder holding the local task configs (default: the package's ``eval_tasks/``)."""
    write_tasks: str | None = None
    """Instead of evaluating: write the local task configs, filled in, to this new folder (for plain ``lm_eval
    --include_path``)."""

    def validate(self) -> None:
        """Check paths and values before anything heavy is imported or loaded."""
        if self.write_tasks is not None:
            if not self.local_tasks():
                raise ValueError('--write-tasks: give --wikitext-file and/or --lambada-file, the data the written '
                                 'task configs read')
            if Path(self.write_tasks).exists() or Path(self.write_tasks).is_symlink():
                raise FileExistsError(f'--write-tasks: {self.write_tasks} exists; give a new folder')
        if self.model_dir is None:
            if self.write_tasks is None:
                raise ValueError('model_dir: missing; give an exported HF model folder (or --write-tasks DIR to write '
                                 'the task configs for plain lm_eval)')
        else:
            model_dir = Path(self.model_dir)
            if not model_dir.is_dir():
                raise FileNotFoundError(f'model_dir: no such folder: {self.model_dir}')
            if not (model_dir / 'config.json').is_file():
                raise FileNotFoundError(f'model_dir: {self.model_dir} holds no config.json; pass an exported HF model folder')
        for option, path in (('--wikitext-file', self.wikitext_file), ('--lambada-file', self.lambada_file)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f'{option}: no such file: {path}')
        bad = [t for t in self.tasks if t not in STOCK_TASKS]
        if bad:
            raise ValueError(f'--tasks: unknown task(s) {", ".join(bad)}; allowed: {", ".join(STOCK_TASKS)}')
        if self.dtype not in DTYPES:
            raise ValueError(f'--dtype={self.dtype!r}; allowed: {", ".join(DTYPES)}')
        for option, value in (('--batch-size', self.batch_size), ('--max-length', self.max_length), ('--limit', self.limit)):
            if value is not None and value < 1:
                raise ValueError(f'{option} must be a positive integer, got {value}')
        if self.local_tasks():
            task_dir = Path(self.task_dir)
            missing = [n for n in [TASK_UTILS] + [t.yaml for t, _ in self.local_tasks()] if not (task_dir / n).is_file()]
            if missing:
                raise FileNotFoundError(f'--task-dir: {self.task_dir} lacks {", ".join(missing)} '
                                        f'(the task configs shipped in {TASK_DIR})')
            for task, _ in self.local_tasks():
                check_placeholder(task_dir / task.yaml, task)

    def local_tasks(self) -> list[tuple[LocalTask, str]]:
        """The local tasks asked for, each with its data file."""
        files = {'wikitext': self.wikitext_file, 'lambada': self.lambada_file}
        return [(LOCAL_TASKS[k], f) for k, f in files.items() if f is not None]

    def stock_tasks(self) -> list[str]:
        """The stock tasks: those named, or the paper's two when nothing at all is asked for."""
        if self.tasks:
            return list(self.tasks)
        return [] if self.local_tasks() else list(DEFAULT_TASKS)


def check_placeholder(path: Path, task: LocalTask) -> None:
    """Refuse a task config whose placeholder was edited away: its data path would not be filled in."""
    if not any(task.placeholder in line.split('#', 1)[0] for line in path.read_text().splitlines()):
        raise ValueError(
            f'{path} no longer holds the placeholder {task.placeholder} (edited?), so the file given with '
            f'{task.option} would not be used: restore the file as shipped (git checkout -- <file> in a checkout, '
            f'or reinstall wesar-foundry) and pass the data file with {task.option} instead; for plain lm_eval, '
            f'wesar-foundry eval --write-tasks DIR {task.option} FILE writes a filled-in copy')


def write_task_dir(cfg: EvalConfig, out: Path) -> None:
    """Copy the local task configs into ``out`` with their data paths filled in."""
    src = Path(cfg.task_dir)
    shutil.copyfile(src / TASK_UTILS, out / TASK_UTILS)
    for task, data_file in cfg.local_tasks():
        text = (src / task.yaml).read_text()
        # A JSON string is a valid double-quoted YAML scalar: any path survives quoting.
        (out / task.yaml).write_text(text.replace(task.placeholder, json.dumps(str(Path(data_file).resolve()))))


def write_tasks(cfg: EvalConfig) -> Path:
    """``--write-tasks``: the filled-in task configs in the new folder ``cfg.write_tasks`` (whole or not at all)."""
    cfg.validate()
    out = Path(cfg.write_tasks)
    with staged_dir(out) as tmp:
        write_task_dir(cfg, tmp)
    return out


def lm_eval_command(cfg: EvalConfig) -> str:
    """The plain ``lm_eval`` command that runs what ``cfg`` asks, on the folder ``--write-tasks`` wrote."""
    model = str(Path(cfg.model_dir).resolve()) if cfg.model_dir else '<exported model folder>'
    model_args = f'pretrained={model},dtype={cfg.dtype}'
    if cfg.max_length is not None:
        model_args += f',max_length={cfg.max_length}'
    tasks = ','.join([t.name for t, _ in cfg.local_tasks()] + list(cfg.tasks))
    args = ['lm_eval', '--model', 'hf', '--model_args', model_args, '--include_path', str(Path(cfg.write_tasks).resolve()),
            '--tasks', tasks, '--batch_size', str(cfg.batch_size), '--device', cfg.device]
    if cfg.limit is not None:
        args += ['--limit', str(cfg.limit)]
    return shlex.join(args)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run lm-eval on ``cfg.model_dir``; returns {'tasks': {task: {metric: value, 'docs': n, 'data': ...}}, ...}."""
    cfg.validate()
    try:
        import lm_eval
    except ModuleNotFoundError as e:
        raise ImportError(f'wesar-foundry eval runs lm-eval-harness, which is not installed ({e}); install it with '
                          "pip install -c constraints.txt -e '.[eval]' in a checkout, or pip install 'lm-eval>=0.4.8'") from None
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    stock = cfg.stock_tasks()
    local = cfg.local_tasks()
    lm = HFLM(pretrained=cfg.model_dir, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
              max_length=cfg.max_length)
    with tempfile.TemporaryDirectory(prefix='wesar-eval-tasks-') as tmp:
        write_task_dir(cfg, Path(tmp))
        # Indexing lm-eval's ~15k stock task configs costs seconds: skip it when no stock task is asked.
        manager = TaskManager(include_path=tmp, include_defaults=bool(stock))
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=stock + [t.name for t, _ in local], task_manager=manager, limit=cfg.limit,
            bootstrap_iters=0, log_samples=False)
    data = {t.name: str(Path(f).resolve()) for t, f in local}
    tasks: dict[str, dict[str, Any]] = {}
    for name, metrics in raw['results'].items():
        row: dict[str, Any] = {'data': data.get(name, 'hub'), 'docs': _docs(raw, name)}
        for metric in METRICS.get(name, ()):
            row[metric] = float(metrics[f'{metric},none'])
        tasks[name] = row
    return {'model_dir': str(Path(cfg.model_dir).resolve()), 'lm_eval_version': _version('lm_eval'),
            'limit': cfg.limit, 'tasks': tasks}


def _docs(raw: dict, task: str) -> int | None:
    n = raw.get('n-samples', {}).get(task, {})
    return n.get('effective')


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist.replace('_', '-'))


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per task and metric."""
    lines = ['| task | metric | value | docs |', '|---|---|---|---|']
    for task, row in result['tasks'].items():
        for metric in METRICS.get(task, ()):
            value = row[metric]
            shown = f'{value:.4f}' if math.isfinite(value) and abs(value) < 1e6 else f'{value:.4g}'
            lines.append(f'| {task} | {metric} | {shown} | {row["docs"]} |')
    if result.get('limit'):
        lines.append(f'\n(first {result["limit"]} documents per task only: not comparable to full-split numbers)')
    return '\n'.join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
    write_text(Path(path), json.dumps(result, indent=2) + '\n')
