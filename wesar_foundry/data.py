"""Corpus sources → a BPE tokenizer → train/val MDS datasets for llm-foundry's ``text`` loader.

Sources:
- ``docstrings``: the embedded default — docstrings of the installed Python standard library,
  then of the installed packages (site-packages), read with ``ast`` (nothing imported, no
  network). The stdlib alone gives about 2.2 M characters; ``max_chars`` (default 4 M, about 1 M tokens) caps it.
- local ``.txt`` files (split into ~2k-character paragraphs) and ``.jsonl`` files (one document
  per line, its ``text`` field);
- ``hf:<name>[:<config>]``: a Hugging Face dataset, streamed (needs the network), e.g.
  ``hf:wikitext:wikitext-103-raw-v1`` or ``hf:tiiuae/falcon-refinedweb`` (field ``content``).

Documents go to val when crc32(document) % 100 < val_percent, so the split is stable whatever
the order. Tokens are concatenated with an EOS after each document and cut into samples of
``seq_len`` tokens (an MDS ``tokens`` column, ``ndarray:int32``).
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wesar_foundry.atomic import staged_dir

EOS, PAD = '<|endoftext|>', '<|pad|>'
DEFAULT_SOURCE = 'docstrings'
MANIFEST = 'prepare.json'
# Stdlib folders that are test suites or tooling rather than prose.
_SKIP_DIRS = {'test', 'tests', 'idlelib', 'site-packages', 'dist-packages', 'lib2to3', 'turtledemo', '__pycache__'}


@dataclass
class PrepareConfig:
    """What ``wesar-foundry prepare`` builds."""

    out: str = 'wesar-data'
    """Output folder: ``tokenizer/``, ``train/`` and ``val/`` MDS, and a manifest."""
    sources: list[str] = field(default_factory=lambda: [DEFAULT_SOURCE])
    """``docstrings``, local .txt/.jsonl paths, or ``hf:<name>[:<config>]``."""
    tokenizer: str | None = None
    """An existing tokenizer (folder or hub name) instead of training a BPE."""
    vocab_size: int = 4096
    """Size of the trained byte-level BPE (special tokens included)."""
    seq_len: int = 128
    """Tokens per MDS sample; at least the training max_seq_len."""
    val_percent: float = 5.0
    """Share of documents held out for val."""
    text_field: str | None = None
    """Field holding the text in .jsonl / hub records (default: ``text``, else ``content``)."""
    hf_split: str = 'train'
    """Split of a hub dataset."""
    max_docs: int | None = None
    """Stop after this many documents per source (hub datasets are large)."""
    max_chars: int | None = 4_000_000
    """Stop after this many characters in all (None: no cap)."""


def _progress(msg: str) -> None:
    print(f'[prepare] {msg}', file=sys.stderr, flush=True)


def _python_files(root: Path, skip: set[str]) -> list[Path]:
    return sorted(p for p in root.rglob('*.py') if not skip.intersection(p.relative_to(root).parts))


def iter_docstrings() -> Iterator[str]:
    """Docstrings of modules, classes and functions: the stdlib first, then site-packages, in a
    fixed order (so the same installation always gives the same corpus)."""
    paths = sysconfig.get_paths()
    stdlib, purelib = Path(paths['stdlib']), Path(paths['purelib'])
    files = _python_files(stdlib, _SKIP_DIRS)
    if purelib.is_dir() and stdlib not in purelib.parents:
        files += _python_files(purelib, _SKIP_DIRS - {'site-packages', 'dist-packages'})
    for i, path in enumerate(files):
        if i % 500 == 0:
            _progress(f'docstrings: {i} of {len(files)} files read')
        try:
            tree = ast.parse(path.read_text(encoding='utf-8'))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    yield doc


def _paragraphs(text: str, size: int = 2000) -> Iterator[str]:
    chunk: list[str] = []
    n = 0
    for para in text.split('\n\n'):
        chunk.append(para)
        n += len(para) + 2
        if n >= size:
            yield '\n\n'.join(chunk)
            chunk, n = [], 0
    if chunk:
        yield '\n\n'.join(chunk)


def _record_text(record: dict, text_field: str | None, where: str) -> str:
    if text_field is not None:
        if text_field not in record:
            raise ValueError(f'{where}: record has no field {text_field!r} (text_field); fields: {", ".join(record)}')
        return record[text_field]
    for key in ('text', 'content'):
        if key in record:
            return record[key]
    raise ValueError(f'{where}: record has neither "text" nor "content"; pass text_field (fields: {", ".join(record)})')


def iter_source(source: str, cfg: PrepareConfig) -> Iterator[str]:
    """The documents of one source."""
    if source == DEFAULT_SOURCE:
        yield from iter_docstrings()
    elif source.startswith('hf:'):
        from datasets import load_dataset  # network: only on demand
        name, _, config = source[3:].partition(':')
        ds = load_dataset(name, config or None, split=cfg.hf_split, streaming=True)
        for record in ds:
            text = _record_text(record, cfg.text_field, source)
            if text.strip():
                yield text
    elif source.endswith('.jsonl'):
        with open(source, encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield _record_text(json.loads(line), cfg.text_field, f'{source}:{lineno}')
    else:
        yield from _paragraphs(Path(source).read_text(encoding='utf-8'))


def check_sources(sources: list[str]) -> None:
    """Fail before any work on a source that cannot be read."""
    if not sources:
        raise ValueError('sources is empty; give docstrings, a .txt/.jsonl path, or hf:<name>')
    for s in sources:
        if s == DEFAULT_SOURCE or s.startswith('hf:'):
            continue
        if not s.endswith(('.txt', '.jsonl', '.tokens')):
            raise ValueError(f'source {s!r}: allowed are {DEFAULT_SOURCE!r}, .txt/.tokens/.jsonl files, or hf:<name>[:<config>]')
        if not Path(s).is_file():
            raise FileNotFoundError(f'source {s!r}: no such file')


def iter_documents(cfg: PrepareConfig) -> Iterator[str]:
    """All sources in order, capped by max_docs (per source) and max_chars (in all)."""
    chars = 0
    for source in cfg.sources:
        for i, doc in enumerate(iter_source(source, cfg)):
            if cfg.max_docs is not None and i >= cfg.max_docs:
                break
            yield doc
            chars += len(doc)
            if cfg.max_chars is not None and chars >= cfg.max_chars:
                return


def is_val(doc: str, val_percent: float) -> bool:
    return zlib.crc32(doc.encode('utf-8')) % 10000 < val_percent * 100


def train_tokenizer(docs: Iterable[str], vocab_size: int):
    """A byte-level BPE with distinct EOS and PAD tokens, as a ``PreTrainedTokenizerFast``.

    PAD must differ from EOS: llm-foundry's collator masks every label equal to pad_token_id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=True,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=EOS)


def write_mds(docs: Iterable[str], tokenizer, out: Path, seq_len: int) -> int:
    """Concatenate tokenized documents (EOS after each) into ``seq_len`` samples; returns samples."""
    import numpy as np
    from streaming import MDSWriter

    eos = tokenizer.eos_token_id
    buf: list[int] = []
    n = 0
    with MDSWriter(out=str(out), columns={'tokens': 'ndarray:int32'}, compression=None) as writer:
        for doc in docs:
            buf.extend(tokenizer(doc, add_special_tokens=False)['input_ids'])
            buf.append(eos)
            while len(buf) >= seq_len:
                writer.write({'tokens': np.asarray(buf[:seq_len], dtype=np.int32)})
                buf = buf[seq_len:]
                n += 1
    return n


def _same(a: dict | None, b: dict) -> bool:
    # The folder may have moved: compare what was built, not where.
    drop = lambda d: {k: v for k, v in (d or {}).items() if k != 'out'}  # noqa: E731
    return a is not None and drop(a) == drop(b)


def prepare(cfg: PrepareConfig, force: bool = False) -> Path:
    """Build tokenizer + train/val MDS into ``cfg.out``; reuse it if built with the same config.

    Everything is written to a temporary sibling folder and renamed at the end, so an
    interrupted run leaves no half-written dataset behind.
    """
    check_sources(cfg.sources)
    if cfg.seq_len < 2 or cfg.vocab_size < 300 or not 0 <= cfg.val_percent <= 100:
        raise ValueError('seq_len must be >= 2, vocab_size >= 300 (256 bytes + merges) and 0 <= val_percent <= 100')
    out = Path(cfg.out)
    manifest = out / MANIFEST
    if manifest.exists() and not force:
        if _same(json.loads(manifest.read_text()).get('config'), asdict(cfg)):
            _progress(f'reusing {out} (same config; --force rebuilds)')
            return out
        raise FileExistsError(f'{out} holds data prepared with another config; pass --force to replace it')
    if out.exists() and not manifest.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f'{out} exists and is not a prepared dataset; pass --force or choose another out')

    with staged_dir(out) as tmp:
        _progress('reading documents')
        docs = list(iter_documents(cfg))
        if not docs:
            raise ValueError(f'sources {cfg.sources} gave no documents')
        train = [d for d in docs if not is_val(d, cfg.val_percent)]
        val = [d for d in docs if is_val(d, cfg.val_percent)]
        _progress(f'{len(docs)} documents ({sum(map(len, docs)):,} chars): {len(train)} train, {len(val)} val')
        if cfg.tokenizer:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
            if tokenizer.eos_token is None:
                raise ValueError(f'tokenizer {cfg.tokenizer!r} has no eos_token, which llm-foundry requires')
        else:
            _progress(f'training a byte-level BPE, vocab {cfg.vocab_size}')
            tokenizer = train_tokenizer(train or val, cfg.vocab_size)
        tokenizer.model_max_length = max(cfg.seq_len, getattr(tokenizer, 'model_max_length', 0) or 0)
        tokenizer.save_pretrained(tmp / 'tokenizer')
        counts = {}
        for split, split_docs in (('train', train), ('val', val)):
            if not split_docs:
                continue  # val_percent 0 or 100: an eval-only (e.g. WikiText) or train-only set
            _progress(f'writing {split} MDS')
            counts[split] = write_mds(split_docs, tokenizer, tmp / split, cfg.seq_len)
            if counts[split] == 0:
                raise ValueError(f'the {split} split has no sample of {cfg.seq_len} tokens; add text or lower seq_len')
        (tmp / MANIFEST).write_text(json.dumps({'config': asdict(cfg), 'samples': counts, 'vocab': len(tokenizer)}, indent=1))
    _progress(f'done: {out} ({counts} samples of {cfg.seq_len} tokens, vocab {len(tokenizer)})')
    return out
