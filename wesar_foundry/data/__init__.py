"""Datasets for llm-foundry (imports the stdlib and files; tokenizers, transformers, streaming inside functions).

Corpus sources → a tokenizer → train/val MDS datasets for llm-foundry's ``text`` loader, streamed.

- ``sources``: documents, one at a time, from ``docstrings`` (the offline default), local
  .txt/.tokens/.jsonl files and ``hf:<name>`` datasets;
- ``tokenizer``: a byte-level BPE trained on a bounded sample (or an existing tokenizer), and
  batch encoding on every core;
- ``mds``: the split of each document (crc32 of its text, so the split is stable whatever the
  order), ``seq_len``-token samples (tokens concatenated, an EOS after each document; an MDS
  ``tokens`` column, ``ndarray:int32``), and ``check_split`` for training runs;
- ``pipeline``: ``prepare`` itself, streaming documents through the tokenizer into a temporary
  folder renamed at the end.
"""

from wesar_foundry.data.mds import MANIFEST, check_loader_splits, check_split, is_val
from wesar_foundry.data.pipeline import PrepareConfig, prepare
from wesar_foundry.data.sources import DEFAULT_SOURCE, iter_documents, iter_text_file
from wesar_foundry.data.tokenizer import EOS, PAD, train_tokenizer

__all__ = ['DEFAULT_SOURCE', 'EOS', 'MANIFEST', 'PAD', 'PrepareConfig', 'check_loader_splits', 'check_split',
           'is_val', 'iter_documents', 'iter_text_file', 'prepare', 'train_tokenizer']
