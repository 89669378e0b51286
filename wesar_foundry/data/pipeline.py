"""``wesar-foundry prepare``: sources → tokenizer → train/val MDS, streamed.

Every source is read once. Without ``--tokenizer``, the BPE is trained first, on the train
documents among the first ``tokenizer_sample_chars`` characters (a bounded sample: it makes the
vocabulary, not the data); those documents are spooled to a file in the output's temporary
folder as they are read, and read back from it when the data is written, so that a hub dataset
is not streamed twice. Then every document is encoded in batches of about ``BATCH_CHARS``
characters on every core, and each batch's tokens go to its split's MDS writer as it goes:
memory holds one batch (its text, tokens and the tokenizer's encodings) and each split's
current MDS shard (see ``SampleWriter``), whatever the corpus size; disk holds the spooled
sample until the data is written.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from wesar_foundry.files.atomic import staged_dir
from wesar_foundry.data.mds import MANIFEST, SampleWriter, foreign_entries, is_val, splits_written, with_eos
from wesar_foundry.data.sources import DEFAULT_SOURCE, DOC_CHARS, check_sources, iter_documents
from wesar_foundry.data.tokenizer import DocumentEncoder, load_tokenizer, train_tokenizer
from wesar_foundry.files.remote import is_uri

BATCH_CHARS = 1 << 20
"""Characters encoded per batch (the unit the tokenizer spreads over the cores)."""
PROGRESS_SECONDS = 5.0


@dataclass
class PrepareConfig:
    """What ``wesar-foundry prepare`` builds."""

    out: str = 'wesar-data'
    """Output folder: ``tokenizer/``, ``train/`` and ``val/`` MDS, and a manifest; or an object store
    URI (``s3://<bucket>/<prefix>``): prepared in a temporary folder, then uploaded."""
    sources: list[str] = field(default_factory=lambda: [DEFAULT_SOURCE])
    """``docstrings``, local .txt/.tokens/.jsonl paths, or ``hf:<name>[:<config>]``."""
    tokenizer: str | None = None
    """An existing tokenizer (folder or hub name) instead of training a BPE."""
    vocab_size: int = 4096
    """Size of the trained byte-level BPE (special tokens included)."""
    seq_len: int = 128
    """Tokens per MDS sample; at least the training max_seq_len."""
    val_percent: float = 5.0
    """Share of documents held out for val: 0 writes train only, 100 val only (an eval set)."""
    text_field: str | None = None
    """Field holding the text in .jsonl / hub records (default: ``text``, else ``content``)."""
    hf_split: str = 'train'
    """Split of a hub dataset."""
    max_docs: int | None = None
    """Stop after this many documents per source (None: no cap)."""
    max_chars: int | None = None
    """Stop after this many characters in all (None: no cap)."""
    tokenizer_sample_chars: int = 100_000_000
    """The trained BPE reads the train documents among the first this many characters."""

    def validate(self) -> None:
        """Refuse bad options before any source is read."""
        check_sources(self.sources)
        for option, value in (('--max-docs', self.max_docs), ('--max-chars', self.max_chars)):
            if value is not None and value < 1:
                raise ValueError(f'{option} must be a positive integer (leave it out for no cap), got {value}')
        if self.seq_len < 2:
            raise ValueError(f'--seq-len must be >= 2, got {self.seq_len}')
        if self.tokenizer is None and self.vocab_size < 300:
            raise ValueError(f'--vocab-size must be >= 300 (256 bytes, 2 special tokens and merges), got {self.vocab_size}')
        if not 0 <= self.val_percent <= 100:
            raise ValueError(f'--val-percent must be in [0, 100], got {self.val_percent:g}')
        if self.tokenizer_sample_chars < 1:
            raise ValueError(f'--tokenizer-sample-chars must be a positive integer, got {self.tokenizer_sample_chars}')


def _progress(msg: str) -> None:
    print(f'[prepare] {msg}', file=sys.stderr, flush=True)


class _Meter:
    """Documents, tokens and tokens/s on stderr every few seconds."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.docs = 0

    def report(self, writers: dict[str, SampleWriter], final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        tokens = sum(w.tokens for w in writers.values())
        per_split = ', '.join(f'{s} {w.tokens:,}' for s, w in writers.items())
        _progress(f'{self.docs:,} documents, {tokens:,} tokens ({per_split}), '
                  f'{tokens / max(now - self.start, 1e-9):,.0f} tokens/s')


def _batches(docs: Iterable[str], chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    n = 0
    for doc in docs:
        batch.append(doc)
        n += len(doc)
        if n >= chars:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def _documents(cfg: PrepareConfig) -> Iterator[str]:
    return iter_documents(cfg.sources, text_field=cfg.text_field, hf_split=cfg.hf_split, max_docs=cfg.max_docs,
                          max_chars=cfg.max_chars)


def _sample_and_spool(docs: Iterator[str], cfg: PrepareConfig, spool: TextIO) -> Iterator[str]:
    """The documents the BPE learns from: train's (val's for an eval-only set) among the first
    ``tokenizer_sample_chars`` characters of ``docs``. Every document read is also written to
    ``spool`` (a JSON string per line); ``docs`` stays open on the rest."""
    want_val = cfg.val_percent >= 100
    chars = 0
    for doc in docs:
        spool.write(json.dumps(doc) + '\n')
        if is_val(doc, cfg.val_percent) == want_val:
            yield doc
        chars += len(doc)
        if chars >= cfg.tokenizer_sample_chars:
            return


def _read_spool(path: Path) -> Iterator[str]:
    with open(path, encoding='utf-8') as f:
        for line in f:
            yield json.loads(line)
    path.unlink()


def _empty_split_error(split: str, cfg: PrepareConfig, docs: int, writer: SampleWriter | None) -> ValueError:
    if writer is not None and writer.tokens:
        return ValueError(f'the {split} split has {writer.tokens:,} tokens: no sample of --seq-len {cfg.seq_len}; '
                          f'add text{", raise --val-percent" if split == "val" else ""} or lower --seq-len')
    other = 'train-only' if split == 'val' else 'eval-only'
    return ValueError(
        f'the {split} split got no document: the sources gave {docs:,} document(s) and --val-percent {cfg.val_percent:g} '
        f'sends that share of them (by a hash of their text) to val. A .txt is cut into documents at blank lines '
        f'(about {DOC_CHARS} characters each). Give more documents, change --val-percent, or pass --val-percent '
        f'{0 if split == "val" else 100} for a {other} folder')


def _same(a: dict | None, b: dict) -> bool:
    # The folder may have moved: compare what was built, not where. Options added since the folder
    # was built count at their defaults (which reproduce what was built before they existed).
    defaults = asdict(PrepareConfig())
    drop = lambda d: {k: v for k, v in {**defaults, **d}.items() if k != 'out'}  # noqa: E731
    return a is not None and drop(a) == drop(b)


def reuse_prepared(record: str, cfg: PrepareConfig, where: str) -> None:
    """Return (and say so) when the manifest text ``record`` of ``where`` was written for ``cfg``,
    which is then reused as it is; otherwise refuse, since only --force replaces a dataset."""
    if not _same(json.loads(record).get('config'), asdict(cfg)):
        raise FileExistsError(f'{where} holds data prepared with another config; pass --force to replace it')
    _progress(f'reusing {where} (same config; --force rebuilds)')


def prepare(cfg: PrepareConfig, force: bool = False) -> Path | str:
    """Build tokenizer + train/val MDS into ``cfg.out``; reuse it if built with the same config.

    Everything is written to a temporary sibling folder and renamed at the end, so an
    interrupted run leaves no half-written dataset behind. An object store ``cfg.out``
    (``s3://...``) is prepared locally, then uploaded (``wesar_foundry.data.upload``).
    """
    if is_uri(cfg.out):
        from wesar_foundry.data.upload import prepare_remote
        return prepare_remote(cfg, force)
    cfg.validate()
    out = Path(cfg.out)
    manifest = out / MANIFEST
    if manifest.exists() and not force:
        reuse_prepared(manifest.read_text(), cfg, str(out))
        return out
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'--out {out} is a file, not a dataset folder; choose another --out')
    if out.exists():
        # Local output is staged (written whole or not at all), so a folder without a manifest was
        # never prepare's: --force must not delete it, nor anything else kept beside a dataset.
        present = [p.name for p in out.iterdir()]
        foreign = foreign_entries(present)
        if foreign or (present and not manifest.exists()):
            what = ', '.join(foreign[:5]) + (' ...' if len(foreign) > 5 else '') if foreign else f'no {MANIFEST}'
            raise FileExistsError(f'--out {out} is not a prepared dataset (it holds {what}); prepare replaces only '
                                  'a folder it made, even with --force: choose another --out, or move those files '
                                  'away yourself')

    splits = splits_written(cfg.val_percent)
    if len(splits) == 1:
        _progress(f'--val-percent {cfg.val_percent:g}: writing {splits[0]} only')
    with staged_dir(out) as tmp:
        docs = _documents(cfg)
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            _progress(f'training a byte-level BPE, vocab {cfg.vocab_size}, on the {"val" if splits == ("val",) else "train"} '
                      f'documents among the first {cfg.tokenizer_sample_chars:,} characters (--tokenizer-sample-chars)')
            spool = tmp / '.tokenizer-sample.jsonl'  # removed once read back
            with open(spool, 'w', encoding='utf-8') as f:
                tokenizer = train_tokenizer(_sample_and_spool(docs, cfg, f), cfg.vocab_size)
            docs = itertools.chain(_read_spool(spool), docs)
        tokenizer.model_max_length = max(cfg.seq_len, getattr(tokenizer, 'model_max_length', 0) or 0)
        tokenizer.save_pretrained(tmp / 'tokenizer')

        _progress(f'writing {" and ".join(splits)} MDS')
        encoder, eos = DocumentEncoder(tokenizer), tokenizer.eos_token_id
        writers = {s: SampleWriter(tmp / s, cfg.seq_len) for s in splits}
        meter = _Meter()
        for batch in _batches(docs, BATCH_CHARS):
            ids = encoder.encode(batch)
            to_val = [is_val(d, cfg.val_percent) for d in batch]
            for split, writer in writers.items():
                want_val = split == 'val'
                writer.write(with_eos([t for t, v in zip(ids, to_val) if v == want_val], eos))
            meter.docs += len(batch)
            meter.report(writers)
        meter.report(writers, final=True)
        if meter.docs == 0:
            raise ValueError(f'--source {", ".join(cfg.sources)} gave no documents')
        for split, writer in writers.items():
            if writer.samples == 0:
                raise _empty_split_error(split, cfg, meter.docs, writer)
            writer.finish()
        counts = {s: w.samples for s, w in writers.items()}
        (tmp / MANIFEST).write_text(json.dumps({'config': asdict(cfg), 'samples': counts, 'documents': meter.docs,
                                                    'vocab': len(tokenizer)}, indent=1))
    _progress(f'done: {out} ({counts} samples of {cfg.seq_len} tokens, vocab {len(tokenizer)})')
    return out
