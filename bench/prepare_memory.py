"""Peak memory of ``wesar-foundry prepare`` at 1× and 8× a corpus: it must not grow with the corpus.

The corpus at scale k is one ``.txt`` file holding k copies of ``../shared/data``'s WikiText-2
validation split and Tiny Shakespeare (2.2 MB per copy). Each ``prepare`` runs in a fresh child
process through the CLI (``main([...])``); its peak resident set is the kernel's ``ru_maxrss``
of that child, read with ``os.wait4``. The child also reports its RSS right after importing
what ``prepare`` imports (transformers, tokenizers, streaming): the **baseline**. Two cases:

- ``bpe``: no ``--tokenizer``: the byte-level BPE is trained first (on the train documents of
  the first ``--tokenizer-sample-chars`` characters, 100 M by default: here the whole corpus,
  whose distinct words are the same at every scale), then the data is written;
- ``tokenizer``: ``--tokenizer`` a folder (the BPE of the ``bpe`` case at 1×): writing alone.

Goal (issue 10): peak at 8× within 20% of peak at 1×. What memory holds while writing: one
batch of documents (``BATCH_CHARS``, 2 M characters) and its tokens, less than a sample of
tokens per split, and each split's current MDS shard (at most ``streaming``'s 64 MB size limit
per split, reached at about 16 M tokens: the 8× corpus here stays below it).

    python bench/prepare_memory.py            # ~1 min on 2 cores
    python bench/prepare_memory.py --scales 1 8 32 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
TEXTS = ('wikitext-2-valid.tokens', 'tinyshakespeare.txt')
MB = 1e6

_CHILD = r'''
import json, resource, sys, time

def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024

import numpy, streaming, tokenizers, transformers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from wesar_foundry.commands.cli import main
baseline = rss()
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({'code': code, 'baseline': baseline, 'seconds': time.perf_counter() - start}))
'''


def measure(argv: list[str], log: Path) -> dict:
    with open(log, 'w') as err:
        proc = subprocess.Popen([sys.executable, '-c', _CHILD, *argv], stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
    report = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    if os.waitstatus_to_exitcode(status) != 0 or report.get('code') != 0:
        raise RuntimeError(f'prepare {argv} failed:\n{log.read_text()[-3000:]}')
    report['peak'] = usage.ru_maxrss * 1024  # KiB on Linux
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scales', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--seq-len', type=int, default=2048)
    parser.add_argument('--vocab-size', type=int, default=4096)
    parser.add_argument('--cases', nargs='+', default=['bpe', 'tokenizer'], choices=['bpe', 'tokenizer'])
    parser.add_argument('--work', type=Path, help='work folder (default: a temporary one, removed at the end)')
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix='prepare-mem-'))
    work.mkdir(parents=True, exist_ok=True)
    text = ''.join((SHARED / name).read_text(encoding='utf-8') for name in TEXTS)
    rows = []
    tok = None
    try:
        for case in args.cases:
            for k in args.scales:
                corpus = work / f'corpus-{k}x.txt'
                if not corpus.exists():
                    corpus.write_text(text * k, encoding='utf-8')
                out = work / f'{case}-{k}x'
                cli = ['prepare', '--out', str(out), '--source', str(corpus), '--seq-len', str(args.seq_len), '--force']
                if case == 'bpe':
                    cli += ['--vocab-size', str(args.vocab_size)]
                else:
                    if tok is None:  # the 1x BPE, kept aside
                        tok = work / 'tokenizer'
                        measure(['prepare', '--out', str(work / 'tok-data'), '--source', str(work / f'corpus-{args.scales[0]}x.txt'),
                                 '--vocab-size', str(args.vocab_size), '--seq-len', str(args.seq_len), '--force'],
                                work / 'tok.stderr')
                        shutil.rmtree(tok, ignore_errors=True)
                        shutil.copytree(work / 'tok-data' / 'tokenizer', tok)
                    cli += ['--tokenizer', str(tok)]
                r = measure(cli, out.with_suffix('.stderr'))
                manifest = json.loads((out / 'prepare.json').read_text())
                r.update(case=case, scale=k, mb=corpus.stat().st_size / MB,
                         tokens=sum(manifest['samples'].values()) * args.seq_len)
                rows.append(r)
                shutil.rmtree(out, ignore_errors=True)
                print(f'{case} {k}x: peak {r["peak"] / MB:.0f} MB, {r["tokens"]:,} tokens in {r["seconds"]:.1f} s',
                      flush=True)
        print()
        print('| case | corpus | text (MB) | tokens written | baseline RSS (MB) | peak RSS (MB) | peak − baseline (MB) | '
              'peak / peak at 1st scale | time (s) |')
        print('|---|---|---|---|---|---|---|---|---|')
        for r in rows:
            first = next(x for x in rows if x['case'] == r['case'])
            print(f'| {r["case"]} | {r["scale"]}× | {r["mb"]:.1f} | {r["tokens"]:,} | {r["baseline"] / MB:.0f} | '
                  f'{r["peak"] / MB:.0f} | {(r["peak"] - r["baseline"]) / MB:.0f} | {r["peak"] / first["peak"]:.3f} | '
                  f'{r["seconds"]:.1f} |')
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
