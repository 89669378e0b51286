"""Helpers for the local-file lm-eval tasks in this folder (wikitext_local, lambada_openai_local).

The metrics, detokenizer and word/byte counts are lm-eval's own (imported from its stock
``wikitext`` task); only the reading of local files in the standard formats lives here.
"""

from __future__ import annotations

import datasets
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as wikitext_process_results  # noqa: F401
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: F401


def _is_title(line: str) -> bool:
    # A level-1 heading (' = Title = '); deeper ones are ' = = Section = = '.
    rline = line.replace('= = =', '===').replace('= =', '==').strip()
    return rline.startswith('= ') and rline.endswith(' =')


def split_pages(text: str) -> list[str]:
    """One WikiText split file → its articles, as EleutherAI/wikitext_document_level builds them:
    a page starts at each level-1 heading line and keeps its lines joined by newlines."""
    pages, lines = [], []
    for line in text.split('\n'):
        if _is_title(line):
            page = '\n'.join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    page = '\n'.join(lines)
    if page.strip():
        pages.append(page)
    return pages


def wikitext_pages(dataset: datasets.Dataset) -> datasets.Dataset:
    """The ``text`` builder read each file whole (sample_by: document): split it into pages."""
    pages = [page for text in dataset['text'] for page in split_pages(text)]
    return datasets.Dataset.from_dict({'page': pages})


def lambada_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """LAMBADA records → the stock task's ``{"text"}``: passages whose last word is the target.

    Accepts lambada_openai's own layout (``text``) and llm-foundry's local ICL layout
    (``context`` + ``continuation``, the target word without its leading space).
    """
    columns = set(dataset.column_names)
    if not ('text' in columns or {'context', 'continuation'} <= columns):
        raise ValueError(f'LAMBADA records need a "text" field or "context" + "continuation"; got {sorted(columns)}')

    def to_text(d: dict) -> dict:
        # Per record: the json builder fills a field missing from some records with None.
        if d.get('text') is not None:
            return {'text': d['text']}
        return {'text': d['context'].rstrip(' ') + ' ' + d['continuation'].strip()}

    return dataset.map(to_text, remove_columns=dataset.column_names)
