"""The documented paper-data commands (docs/paper-runs.md), run as written on small local stand-ins for the hub datasets
and the LLaMA tokenizer, give at least one global batch of the YAML they feed.

RefinedWeb (``--source hf:tiiuae/falcon-refinedweb --text-field content``) becomes a local .jsonl
of ``content`` records, WikiText (``hf:wikitext:...``) a .jsonl of its line records, and
``hf-internal-testing/llama-tokenizer`` a BPE trained here whose tokens are whole words (about 7
characters per token, more than LLaMA's ~4: the 4 M-character cap ``prepare`` once applied
silently would have left about 0.6 M tokens, below the 1 M-token batch). Everything else in the
commands is kept as written. The stand-in RefinedWeb is sized for the YAML's train batch
(512 × 2048 tokens) and for ``--val-percent``'s share to hold a full sample.
"""

from __future__ import annotations

import json
import random
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import docs_text
from wesar_foundry.commands.cli import main
from wesar_foundry.data import MANIFEST, check_loader_splits, check_split, train_tokenizer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / 'yamls' / 'pretrain' / '1b' / 'wesar-rapid.yaml'
GPUS = 8  # what the YAML's FSDP settings are sized for (its header): the eval loader's global batch is 8 × its device batch
REFINEDWEB, WIKITEXT, LLAMA = 'hf:tiiuae/falcon-refinedweb', 'hf:wikitext:wikitext-103-raw-v1', 'hf-internal-testing/llama-tokenizer'


def readme_prepare_commands() -> dict[str, list[str]]:
    """The README's ``wesar-foundry prepare`` commands (continuation lines joined), by hub source."""
    text = re.sub(r'\\\n\s*', ' ', docs_text())
    commands = {}
    for line in text.splitlines():
        if line.startswith('wesar-foundry prepare '):
            argv = shlex.split(line, comments=True)[1:]
            if '--source' in argv:
                commands[argv[argv.index('--source') + 1]] = argv
    return commands


def _words(rng: random.Random, n: int) -> list[str]:
    syllables = ['ka', 'lo', 'mi', 'ren', 'tu', 'sa', 'vel', 'din', 'or', 'pe', 'qua', 'zi']
    return sorted({''.join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(n)})


def _stand_ins(tmp: Path) -> dict[str, str]:
    rng = random.Random(0)
    words = _words(rng, 400)
    weights = [1 / (i + 1) for i in range(len(words))]

    def doc(n_words: int) -> str:
        return ' '.join(rng.choices(words, weights, k=n_words)) + ' .'

    refinedweb = tmp / 'refinedweb-stand-in.jsonl'
    with open(refinedweb, 'w') as f:
        for i in range(9000):  # about 3.2 M tokens: 0.1% of the documents give val a full 2048-token sample
            f.write(json.dumps({'content': doc(rng.randint(150, 550)), 'url': f'https://example.org/{i}'}) + '\n')
    wikitext = tmp / 'wikitext-stand-in.jsonl'
    with open(wikitext, 'w') as f:
        for i in range(150):  # records are lines, as on the hub: headings, blank lines, paragraphs
            for line in (f' = {doc(3)} = \n', '', f' {doc(600)} \n', '', f' {doc(400)} \n'):
                f.write(json.dumps({'text': line}) + '\n')
    tokenizer = tmp / 'llama-stand-in'
    tok = train_tokenizer([doc(2000) for _ in range(20)] + [' '.join(words)], vocab_size=4000)
    assert all(len(tok(' ' + w)['input_ids']) == 1 for w in words)  # whole-word tokens
    tok.save_pretrained(tokenizer)
    return {REFINEDWEB: str(refinedweb), WIKITEXT: str(wikitext), LLAMA: str(tokenizer)}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> dict[str, Path]:
    """The README's two commands, run in a scratch folder with the stand-ins swapped in."""
    tmp = tmp_path_factory.mktemp('paper-data')
    stand_ins = _stand_ins(tmp)
    commands = readme_prepare_commands()
    assert {REFINEDWEB, WIKITEXT} <= set(commands), f'README prepare commands: {list(commands)}'
    out = {}
    for source in (REFINEDWEB, WIKITEXT):
        argv = [stand_ins.get(a, a) for a in commands[source]]
        argv[argv.index('--out') + 1] = folder = str(tmp / argv[argv.index('--out') + 1])
        assert main(argv) == 0, argv
        out[source] = Path(folder)
    return out


def _yaml():
    cfg = OmegaConf.load(YAML)
    return cfg


def test_refinedweb_command_gives_a_full_global_train_batch(prepared):
    cfg = _yaml()
    manifest = json.loads((prepared[REFINEDWEB] / MANIFEST).read_text())
    assert manifest['config']['seq_len'] >= cfg.variables.max_seq_len
    assert manifest['samples']['train'] >= cfg.global_train_batch_size  # drop_last: true needs one whole batch
    if manifest['config']['val_percent'] > 0:
        assert manifest['samples']['val'] >= 1


def test_wikitext_command_gives_a_global_eval_batch_and_no_train_split(prepared):
    cfg = _yaml()
    manifest = json.loads((prepared[WIKITEXT] / MANIFEST).read_text())
    assert manifest['config']['seq_len'] >= cfg.variables.max_seq_len
    assert manifest['samples'] == {'val': manifest['samples']['val']}
    assert manifest['samples']['val'] >= GPUS * cfg.device_eval_batch_size
    with pytest.raises(ValueError, match='--val-percent 100 \\(an eval-only set\\)'):
        check_split(prepared[WIKITEXT], 'train')


def test_the_yaml_pointed_at_both_folders_finds_every_split(prepared):
    cfg = _yaml()
    cfg.variables.data_local, cfg.variables.eval_data_local = str(prepared[REFINEDWEB]), str(prepared[WIKITEXT])
    check_loader_splits(OmegaConf.to_container(cfg, resolve=True))
