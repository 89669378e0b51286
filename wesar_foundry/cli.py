"""``wesar-foundry``: one console script, one subcommand per job (thin wrappers)."""

from __future__ import annotations

import argparse
import sys


def _prepare(args: argparse.Namespace) -> int:
    from wesar_foundry.data import PrepareConfig, prepare
    cfg = PrepareConfig(
        out=args.out, sources=args.source or ['docstrings'], tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        seq_len=args.seq_len, val_percent=args.val_percent, text_field=args.text_field, hf_split=args.hf_split,
        max_docs=args.max_docs, max_chars=args.max_chars,
    )
    prepare(cfg, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='wesar-foundry', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('prepare', help='build a BPE tokenizer and train/val MDS datasets for llm-foundry')
    p.add_argument('--out', default='wesar-data', help='output folder (default: wesar-data)')
    p.add_argument('--source', action='append',
                   help="'docstrings' (default: the stdlib's docstrings, offline), a .txt/.jsonl file, or "
                        "hf:<name>[:<config>] (repeatable)")
    p.add_argument('--tokenizer', help='use this tokenizer (folder or hub name) instead of training a BPE')
    p.add_argument('--vocab-size', type=int, default=4096)
    p.add_argument('--seq-len', type=int, default=128, help='tokens per MDS sample (>= training max_seq_len)')
    p.add_argument('--val-percent', type=float, default=5.0)
    p.add_argument('--text-field', help='record field holding the text (default: text, else content)')
    p.add_argument('--hf-split', default='train')
    p.add_argument('--max-docs', type=int, help='documents per source at most')
    p.add_argument('--max-chars', type=int, help='characters in all at most')
    p.add_argument('--force', action='store_true', help='rebuild even if --out holds a prepared dataset')
    p.set_defaults(func=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f'wesar-foundry {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
