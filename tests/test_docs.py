"""The README's and docs/' commands, run as written, in order, in one fresh folder.

Every ``bash`` block of README.md, then of each page in the README's docs map (in the map's
order), is run line by line in one empty folder, as a reader following the pages would. Lines are
changed in two ways only: flags the commands take are appended to shrink them (``REDUCTIONS``),
and the first set-up command runs what follows its install (the suite runs in that install). A
block that cannot run here carries ``<!-- docs-test: skip (reason) -->`` on the line above it.
Files a reader brings (a WikiText split, a LAMBADA jsonl) are written as small stand-ins first. A
block followed by "prints `X`" must print X.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKIP = re.compile(r'<!--\s*docs-test:\s*skip\s*\((?P<reason>.+)\)\s*-->')
SETUP_INSTALL = re.compile(r'^python3 -m venv \.venv && \.venv/bin/pip install (?P<args>.+?) && (?P<rest>.+)$')

# Appended to a command that starts with the key: flags it takes, so that every block runs in
# seconds. Order matters only for readability; later dotlist keys win in llm-foundry's CLI.
REDUCTIONS = {
    'wesar-foundry demo': '--steps 12 --max-chars 150000',  # steps > the demo's 10 warm-up steps
    'wesar-foundry prepare': '--max-chars 300000',
    'llmfoundry train': 'max_duration=4ba eval_interval=2ba eval_subset_num_batches=1 scheduler.t_warmup=2ba',
    'wesar-foundry coord-check': '--widths 32,64 --steps 3',
    'FSDP_VERSION=2 composer -n 2': ('max_duration=4ba save_interval=2ba eval_interval=2ba '
                                     'scheduler.t_warmup=4096tok eval_subset_num_batches=1'),
}


def _wikitext() -> str:
    paras = [' '.join(f'word{i * 7 + j} of the article' for j in range(30)) for i in range(4)]
    return ''.join(f' = Article {k} = \n \n {p} \n \n' for k, p in enumerate(paras))


def _lambada() -> str:
    return ''.join(json.dumps({'text': f'the cat sat on the mat and the dog sat on the mat number {i}'}) + '\n'
                   for i in range(4))


DIST_ENV = {'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT',
            'GROUP_RANK', 'ROLE_RANK', 'ROLE_WORLD_SIZE', 'GROUP_WORLD_SIZE'}

# What a reader brings to the commands that name a file of their own.
INPUTS = {'wiki.test.tokens': _wikitext, 'lambada_openai.jsonl': _lambada}


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    """Path relative to the repository root."""
    line: int
    """1-based line of the opening fence."""
    lang: str
    """The fence's info string (``bash``, ``yaml``, ...)."""
    text: str
    """The block's body, dedented."""
    skip: str | None
    """The reason given by a docs-test skip marker just above it, if any."""
    prints: str | None
    """What the page says the block prints (a "prints `X`" right after it), if anything."""

    def commands(self) -> list[str]:
        """The block's command lines, continuation lines joined, comments and blank lines dropped."""
        if self.lang != 'bash':
            return []
        joined = re.sub(r'\\\n\s*', ' ', self.text)
        return [line for line in (_uncomment(raw) for raw in joined.splitlines()) if line]


def _uncomment(line: str) -> str:
    """``line`` without a ``#`` comment outside quotes, stripped."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in '"\'':
            quote = c
        elif c == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def docs_pages() -> list[str]:
    """README.md, then the pages of its docs map, in the map's order."""
    readme = (ROOT / 'README.md').read_text()
    section = readme.split('\n## Docs\n', 1)[1]
    pages = list(dict.fromkeys(re.findall(r'\]\((docs/[\w.-]+\.md)\)', section)))
    return ['README.md', *pages]


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = re.match(r'^(\s*)```(\w*)\s*$', lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        i += 1
        body = []
        while not re.match(rf'^{indent}```\s*$', lines[i]):
            body.append(lines[i])
            i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), '')
        skip = SKIP.search(before)
        after = ' '.join(lines[i + 1:i + 4])
        prints = re.match(r'\s*prints `([^`]+)`', after)
        found.append(Block(page, start + 1, lang, textwrap.dedent('\n'.join(body)),
                           skip.group('reason').strip() if skip else None, prints.group(1) if prints else None))
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in docs_pages() for b in blocks(page)]


def as_run(command: str) -> str:
    """The line the test runs for ``command``: the install of set-up command 1 dropped, and the
    reductions appended."""
    m = SETUP_INSTALL.match(command)
    if m:
        command = m.group('rest').replace('.venv/bin/', '')
    for prefix, extra in REDUCTIONS.items():
        if command.startswith(prefix + ' ') or command == prefix:
            command = f'{command} {extra}'
    return command


# --- What the pages must be, checked without running anything ------------------------------------

def test_the_docs_map_lists_every_page_in_docs():
    listed = set(docs_pages()[1:])
    on_disk = {f'docs/{p.name}' for p in (ROOT / 'docs').glob('*.md')}
    assert listed == on_disk, f'not in the README\'s docs map: {sorted(on_disk - listed)}; missing: {sorted(listed - on_disk)}'


def test_every_command_block_runs_here_or_says_why_not():
    bash = [b for b in all_blocks() if b.lang == 'bash']
    assert len(bash) >= 10
    for b in bash:
        assert b.skip is None or len(b.skip) > 20, f'{b.page}:{b.line}: say why this block is not run'
    assert sum(b.skip is None for b in bash) >= 8
    # A shell block must be fenced as bash to be run: no `sh`/`console`/bare fences with commands.
    for b in all_blocks():
        assert b.lang in {'bash', 'yaml', 'bibtex', 'python', ''}, f'{b.page}:{b.line}: fence {b.lang!r}'
        assert not (b.lang == '' and re.search(r'^(wesar-foundry|llmfoundry|composer|python) ', b.text, re.M)), \
            f'{b.page}:{b.line}: a command block must be fenced ```bash'


def test_the_front_page_is_short_and_its_two_set_up_commands_are_cis():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= 200
    setup = [b for b in blocks('README.md') if b.lang == 'bash'][:2]
    main, suite = (b.commands() for b in setup)
    assert len(main) == 1 and SETUP_INSTALL.match(main[0]) and main[0].endswith('.venv/bin/wesar-foundry demo')
    assert setup[1].skip and len(suite) == 1
    ci = (ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
    assert suite[0] == ci, 'README set-up command 2 must be what .ci/run runs'
    # The install of command 1 is command 2's without the test extra.
    assert SETUP_INSTALL.match(main[0]).group('args').replace('-q ', '') == \
        SETUP_INSTALL.match(suite[0]).group('args').replace('-q ', '').replace("'.[test]'", '.')


def test_the_yaml_blocks_parse():
    import yaml
    for b in all_blocks():
        if b.lang == 'yaml':
            assert isinstance(yaml.safe_load(b.text), dict), f'{b.page}:{b.line}'


# --- Running them ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_commands_of_the_readme_and_the_docs_run_as_written_in_order(tmp_path):
    work = tmp_path / 'reader'
    work.mkdir()
    for name, make in INPUTS.items():
        (work / name).write_text(make())
    env = {**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}', 'PYTHONUNBUFFERED': '1',
           'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    env.pop('PYTHONPATH', None)  # the installed package, not this checkout's tests
    # A reader's shell is no rank of a job: in-process train() calls of earlier tests leave
    # torch.distributed's variables behind, and lm-eval would then try to join a job.
    for name in [k for k in env if k in DIST_ENV or k.startswith(('TORCHELASTIC_', 'COMPOSER_'))]:
        del env[name]
    ran = []
    for b in all_blocks():
        if b.lang != 'bash' or b.skip:
            continue
        out = []
        for command in b.commands():
            run = as_run(command)
            t0 = time.perf_counter()
            proc = subprocess.run(['bash', '-c', run], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            took = time.perf_counter() - t0
            print(f'[docs] {b.page}:{b.line} {took:5.1f}s  {run[:140]}', flush=True)
            assert proc.returncode == 0, (f'{b.page}:{b.line}: `{run}` failed ({proc.returncode}):\n'
                                          f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
            out.append(proc.stdout)
            ran.append(command)
        if b.prints:
            assert b.prints in ''.join(out), f'{b.page}:{b.line}: the page says it prints {b.prints!r}'
    assert len(ran) >= 15
    # What the quick start promises to leave behind.
    assert (work / 'exported' / 'config.json').is_file()
    assert json.loads((work / 'exported' / 'config.json').read_text())['model_type'] == 'llama'
    assert (work / 'fig.png').is_file() and (work / 'wesar-report' / 'summary.md').is_file()
