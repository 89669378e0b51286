"""Tokens per second of ``wesar-foundry prepare`` against llm-foundry's ``convert_text_to_mds``,
on the same local text files, with the same tokenizer, in the same run.

Both write the same thing: an MDS ``tokens`` column (``ndarray:int32``) of ``seq_len``-token
samples, documents concatenated with an EOS between them. The stock tool reads a folder of
``.txt`` files, each file one document, in 1 MB chunks; it uses ``--processes`` worker processes
(here: every core), each taking a share of the files. Ours reads the same files as sources
(split into documents at blank lines, hashed into train and val: work the stock tool does not
do) and encodes batches of documents with the tokenizer's Rust ``encode_batch`` on every core.

The corpus is ``--files`` files, each ``--repeat`` copies of ``../shared/data``'s WikiText-2
validation split and Tiny Shakespeare (2.2 MB per copy); the tokenizer is a byte-level BPE
(``--vocab-size``) trained once by ``prepare`` on one copy, then passed to both as a folder.
Each conversion runs in a fresh child process; the clock starts after the imports (the child
reports the time of the call alone, the tokenizer load included for both). The two tools
alternate (stock first in odd rounds), and the table reports the median over
``--rounds``. Goal (issue 10): ours / stock ≥ 1.0 at each sequence length.

    python bench/prepare_throughput.py                       # seq 2048 and 128, 1 round (~2 min on 2 cores)
    python bench/prepare_throughput.py --seq-lens 2048 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data'
TEXTS = ('wikitext-2-valid.tokens', 'tinyshakespeare.txt')

_CHILD = r'''
import json, sys, time
tool, corpus, tok, out, seq_len = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
from pathlib import Path
files = sorted(str(p) for p in Path(corpus).glob('*.txt'))
if tool == 'stock':
    import os
    from llmfoundry.command_utils import convert_text_to_mds
    from transformers import AutoTokenizer
    eos = AutoTokenizer.from_pretrained(tok).eos_token
    start = time.perf_counter()
    convert_text_to_mds(tokenizer_name=tok, output_folder=out, input_folder=corpus, concat_tokens=seq_len,
                        eos_text=eos, bos_text='', no_wrap=False, compression=None, processes=os.cpu_count(),
                        args_str='bench', reprocess=True, trust_remote_code=False)
    seconds = time.perf_counter() - start
    samples = json.loads((Path(out) / 'index.json').read_text())
    samples = sum(s['samples'] for s in samples['shards'])
else:
    from wesar_foundry.data import PrepareConfig, prepare
    import streaming, transformers  # what prepare imports, outside the clock as for stock
    start = time.perf_counter()
    prepare(PrepareConfig(out=out, sources=files, tokenizer=tok, seq_len=seq_len))
    seconds = time.perf_counter() - start
    samples = sum(json.loads((Path(out) / 'prepare.json').read_text())['samples'].values())
print(json.dumps({'seconds': seconds, 'tokens': samples * seq_len}))
'''


def make_corpus(work: Path, files: int, repeat: int) -> Path:
    corpus = work / 'corpus'
    corpus.mkdir(parents=True)
    text = ''.join((SHARED / name).read_text(encoding='utf-8') for name in TEXTS)
    for i in range(files):
        (corpus / f'part{i:02d}.txt').write_text(text * repeat, encoding='utf-8')
    return corpus


def make_tokenizer(work: Path, vocab_size: int) -> Path:
    from wesar_foundry.data import PrepareConfig, prepare
    out = prepare(PrepareConfig(out=str(work / 'tok-data'), sources=[str(SHARED / n) for n in TEXTS],
                                vocab_size=vocab_size, seq_len=128))
    return out / 'tokenizer'


def run(tool: str, corpus: Path, tok: Path, out: Path, seq_len: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix('.stderr')
    with open(log, 'w') as err:
        proc = subprocess.Popen([sys.executable, '-c', _CHILD, tool, str(corpus), str(tok), str(out), str(seq_len)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f'{tool} failed:\n{log.read_text()[-3000:]}')
    report = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--files', type=int, default=4, help='text files (default 4)')
    parser.add_argument('--repeat', type=int, default=2, help='copies of the 2.2 MB text per file (default 2)')
    parser.add_argument('--seq-lens', type=int, nargs='+', default=[2048, 128])
    parser.add_argument('--vocab-size', type=int, default=4096)
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--work', type=Path, help='work folder (default: a temporary one, removed at the end)')
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix='prepare-bench-'))
    try:
        corpus = make_corpus(work, args.files, args.repeat)
        size = sum(p.stat().st_size for p in corpus.iterdir())
        tok = make_tokenizer(work, args.vocab_size)
        print(f'corpus: {args.files} files, {size / 1e6:.1f} MB; tokenizer: byte-level BPE, vocab {args.vocab_size}; '
              f'{os.cpu_count()} cores', flush=True)
        rows = []
        for seq_len in args.seq_lens:
            results: dict[str, list[dict]] = {'stock': [], 'ours': []}
            for r in range(args.rounds):
                for tool in (('stock', 'ours') if r % 2 == 0 else ('ours', 'stock')):
                    res = run(tool, corpus, tok, work / f'{tool}-{seq_len}', seq_len)
                    results[tool].append(res)
                    print(f'seq {seq_len} round {r + 1} {tool}: {res["tokens"]:,} tokens in {res["seconds"]:.2f} s',
                          flush=True)
            row = {'seq_len': seq_len}
            for tool, rs in results.items():
                row[tool] = statistics.median(x['tokens'] / x['seconds'] for x in rs)
                row[f'{tool}_tokens'] = rs[0]['tokens']
            rows.append(row)
        print()
        print('| seq_len | stock tokens | ours tokens | stock tokens/s | ours tokens/s | ours / stock |')
        print('|---|---|---|---|---|---|')
        for r in rows:
            print(f'| {r["seq_len"]} | {r["stock_tokens"]:,} | {r["ours_tokens"]:,} | {r["stock"]:,.0f} | {r["ours"]:,.0f} | '
                  f'{r["ours"] / r["stock"]:.2f} |')
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
