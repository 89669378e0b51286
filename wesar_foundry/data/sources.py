"""Documents, one at a time, from each kind of source: nothing here holds a corpus in memory.

- ``docstrings``: the embedded default — docstrings of the installed Python standard library,
  then of the installed packages (site-packages), read with ``ast`` (nothing imported, no
  network), in a fixed order. The stdlib alone gives about 2.2 M characters.
- a local ``.txt`` / ``.tokens`` file: paragraphs (text between blank lines, a blank line being
  one that holds only whitespace; CRLF and CR line ends read as LF) gathered into documents of
  about ``DOC_CHARS`` characters. A paragraph longer than ``MAX_PARAGRAPH`` characters becomes
  documents of its own, cut at line ends, and a line longer than ``MAX_PIECE`` is read in pieces:
  a file without blank lines or line ends never has to fit in memory.
- a local ``.jsonl`` file: one document per line, its ``text`` field (or ``text_field``);
- ``hf:<name>[:<config>]``: a Hugging Face dataset in streaming mode (needs the network), e.g.
  ``hf:wikitext:wikitext-103-raw-v1`` or ``hf:tiiuae/falcon-refinedweb`` (field ``content``).

Whitespace-only documents are skipped everywhere: they would add nothing but an EOS.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

DEFAULT_SOURCE = 'docstrings'
TEXT_SUFFIXES = ('.txt', '.tokens')
DOC_CHARS = 2000
"""A .txt document gathers paragraphs until it holds at least this many characters."""
MAX_PARAGRAPH = 1 << 20
"""Characters of one paragraph at most: beyond, it is cut at the next line end (or piece)."""
MAX_PIECE = 1 << 20
"""Characters read at once: a longer line is read in pieces."""
# Stdlib folders that are test suites or tooling rather than prose.
_SKIP_DIRS = {'test', 'tests', 'idlelib', 'site-packages', 'dist-packages', 'lib2to3', 'turtledemo', '__pycache__'}


def _progress(msg: str) -> None:
    print(f'[prepare] {msg}', file=sys.stderr, flush=True)


def _python_files(root: Path, skip: set[str]) -> list[Path]:
    return sorted(p for p in root.rglob('*.py') if not skip.intersection(p.relative_to(root).parts))


@functools.cache
def _docstring_files() -> tuple[Path, ...]:
    # Cached: prepare reads the source twice (tokenizer sample, then the data); listing costs seconds.
    paths = sysconfig.get_paths()
    stdlib, purelib = Path(paths['stdlib']), Path(paths['purelib'])
    files = _python_files(stdlib, _SKIP_DIRS)
    if purelib.is_dir() and stdlib not in purelib.parents:
        files += _python_files(purelib, _SKIP_DIRS - {'site-packages', 'dist-packages'})
    return tuple(files)


def iter_docstrings() -> Iterator[str]:
    """Docstrings of modules, classes and functions: the stdlib first, then site-packages, in a
    fixed order (so the same installation always gives the same corpus)."""
    files = _docstring_files()
    for i, path in enumerate(files):
        if i % 2000 == 0:
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


def iter_text_file(path: str | Path, doc_chars: int = DOC_CHARS) -> Iterator[str]:
    """Documents of a text file: its paragraphs, joined by ``\\n\\n``, gathered up to ``doc_chars``."""
    paragraphs: list[str] = []  # of the document being gathered
    lines: list[str] = []  # of the paragraph being read
    n = m = 0
    # Universal newlines (the default): \r\n and \r arrive as \n, so CRLF blank lines are blank.
    with open(path, encoding='utf-8') as f:
        for piece in iter(functools.partial(f.readline, MAX_PIECE), ''):
            if piece.strip():
                lines.append(piece)
                m += len(piece)
                if m >= MAX_PARAGRAPH:  # no blank line in sight: what was read is a document of its own
                    if paragraphs:
                        yield '\n\n'.join(paragraphs)
                        paragraphs, n = [], 0
                    yield ''.join(lines).rstrip('\n')
                    lines, m = [], 0
                continue
            if lines:  # a blank line, whatever whitespace it holds
                paragraphs.append(''.join(lines).rstrip('\n'))
                n += m + 2
                lines, m = [], 0
                if n >= doc_chars:
                    yield '\n\n'.join(paragraphs)
                    paragraphs, n = [], 0
    if lines:
        paragraphs.append(''.join(lines).rstrip('\n'))
    if paragraphs:
        yield '\n\n'.join(paragraphs)


def _record_text(record: dict, text_field: str | None, where: str) -> str:
    if text_field is not None:
        if text_field not in record:
            raise ValueError(f'{where}: record has no field {text_field!r} (--text-field); fields: {", ".join(record)}')
        return record[text_field]
    for key in ('text', 'content'):
        if key in record:
            return record[key]
    raise ValueError(f'{where}: record has neither "text" nor "content"; pass --text-field (fields: {", ".join(record)})')


def iter_jsonl(path: str | Path, text_field: str | None = None) -> Iterator[str]:
    """One document per non-empty line of a JSON-lines file."""
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield _record_text(json.loads(line), text_field, f'{path}:{lineno}')


def iter_hf(source: str, text_field: str | None = None, split: str = 'train') -> Iterator[str]:
    """Records of a hub dataset, streamed (``hf:<name>[:<config>]``)."""
    from datasets import load_dataset  # network: only on demand
    name, _, config = source[3:].partition(':')
    for record in load_dataset(name, config or None, split=split, streaming=True):
        yield _record_text(record, text_field, source)


def iter_source(source: str, text_field: str | None = None, hf_split: str = 'train') -> Iterator[str]:
    """The non-blank documents of one source."""
    if source == DEFAULT_SOURCE:
        docs = iter_docstrings()
    elif source.startswith('hf:'):
        docs = iter_hf(source, text_field, hf_split)
    elif source.endswith('.jsonl'):
        docs = iter_jsonl(source, text_field)
    else:
        docs = iter_text_file(source)
    return (d for d in docs if d.strip())


def check_sources(sources: list[str]) -> None:
    """Fail before any work on a source that cannot be read."""
    if not sources:
        raise ValueError('--source is empty; give docstrings, a .txt/.jsonl path, or hf:<name>')
    for s in sources:
        if s == DEFAULT_SOURCE or s.startswith('hf:'):
            continue
        if not s.endswith((*TEXT_SUFFIXES, '.jsonl')):
            raise ValueError(f'source {s!r}: allowed are {DEFAULT_SOURCE!r}, .txt/.tokens/.jsonl files, or hf:<name>[:<config>]')
        if not Path(s).is_file():
            raise FileNotFoundError(f'source {s!r}: no such file')


def iter_documents(sources: list[str], *, text_field: str | None = None, hf_split: str = 'train',
                   max_docs: int | None = None, max_chars: int | None = None) -> Iterator[str]:
    """All sources in order, capped by ``max_docs`` (per source) and ``max_chars`` (in all) when given.

    A source read to its end without a single document is an error naming it.
    """
    chars = 0
    for source in sources:
        n = 0
        for doc in iter_source(source, text_field, hf_split):
            if max_docs is not None and n >= max_docs:
                break
            yield doc
            n += 1
            chars += len(doc)
            if max_chars is not None and chars >= max_chars:
                return
        if n == 0:
            raise ValueError(f'source {source!r} gave no documents (empty, or only blank lines or blank records)')
