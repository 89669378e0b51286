"""``wesar-foundry demo --help`` and the front page give the same time for the default demo
(measured: bench/results/demo_default_run/ holds that run's report)."""

from __future__ import annotations

import re
from pathlib import Path

from wesar_foundry.commands.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _demo_help() -> str:
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == 'command')
    return next(c.help for c in sub._choices_actions if c.dest == 'demo')


def test_the_demo_help_and_the_readme_state_the_same_time():
    minutes = re.search(r'about (\d+) min', _demo_help())
    assert minutes, _demo_help()
    paragraphs = [p for p in (ROOT / 'README.md').read_text().split('\n\n') if re.search(r'\bdemo\b', p)]
    stated = {m for p in paragraphs for m in re.findall(r'about (\d+) min', p)}
    assert minutes.group(1) in stated, (minutes.group(0), stated)
