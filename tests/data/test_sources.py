"""Documents from each kind of source: every blank-line shape splits paragraphs; caps only when asked."""

from __future__ import annotations

import json

import pytest

from wesar_foundry.data import sources
from wesar_foundry.data.sources import check_sources, iter_documents, iter_text_file

PARAS = ['First paragraph,\nwith two lines.', 'Second paragraph.', 'Third one.']


@pytest.mark.parametrize('blank', ['\n\n', '\n \n', '\n\t\n', '\n   \t \n', '\n\n\n\n', '\n \n\n\t\n'],
                         ids=['empty', 'space', 'tab', 'mixed', 'several', 'several-with-whitespace'])
def test_a_blank_line_holding_any_whitespace_ends_a_paragraph(tmp_path, blank):
    src = tmp_path / 'c.txt'
    src.write_text(blank.join(PARAS) + '\n')
    assert list(iter_text_file(src, doc_chars=1)) == PARAS


def test_crlf_and_cr_line_ends_split_as_lf(tmp_path):
    crlf, cr = tmp_path / 'crlf.txt', tmp_path / 'cr.txt'
    crlf.write_bytes('\r\n\r\n'.join(p.replace('\n', '\r\n') for p in PARAS).encode())
    cr.write_bytes('\r \r'.join(p.replace('\n', '\r') for p in PARAS).encode())
    assert list(iter_text_file(crlf, doc_chars=1)) == PARAS
    assert list(iter_text_file(cr, doc_chars=1)) == PARAS


def test_wikitext_layout_gives_one_document_per_few_paragraphs(tmp_path):
    # The released split files: ' \n' blank lines around ' = Title = ' headings and paragraphs.
    page = ' = Title {i} = \n \n ' + 'Some words here . ' * 40 + '\n \n = = Section = = \n \n ' + 'More text . ' * 40 + '\n'
    src = tmp_path / 'wiki.valid.tokens'
    src.write_text(' \n' + ''.join(page.format(i=i) for i in range(20)))
    docs = list(iter_text_file(src))
    assert len(docs) > 5
    assert all(1500 < len(d) < 3000 for d in docs[:-1])
    assert not any('\n \n' in d for d in docs)


def test_paragraphs_gather_into_documents_of_doc_chars(tmp_path):
    src = tmp_path / 'c.txt'
    src.write_text('\n\n'.join('x' * 90 for _ in range(100)))
    docs = list(iter_text_file(src, doc_chars=1000))
    assert [d.count('\n\n') + 1 for d in docs] == [11] * 9 + [1]
    assert ''.join(docs).replace('\n', '') == 'x' * 9000


def test_text_without_blank_lines_or_line_ends_is_cut_into_bounded_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'MAX_PIECE', 100)
    monkeypatch.setattr(sources, 'MAX_PARAGRAPH', 300)
    one_line, lines = tmp_path / 'one.txt', tmp_path / 'lines.txt'
    one_line.write_text('a' * 1000)
    lines.write_text(('b' * 49 + '\n') * 20)
    docs = list(iter_text_file(one_line))
    assert [len(d) for d in docs] == [300, 300, 300, 100] and ''.join(docs) == 'a' * 1000
    docs = list(iter_text_file(lines))
    assert [d.count('\n') + 1 for d in docs] == [6, 6, 6, 2] and '\n'.join(docs) + '\n' == lines.read_text()


def test_jsonl_gives_one_document_per_record_and_skips_blank_ones(tmp_path):
    src = tmp_path / 'c.jsonl'
    src.write_text('\n'.join(json.dumps({'content': t}) for t in ['one', '  ', 'two', '']) + '\n\n')
    assert list(iter_documents([str(src)])) == ['one', 'two']
    with pytest.raises(ValueError, match="no field 'body' \\(--text-field\\)"):
        list(iter_documents([str(src)], text_field='body'))


def test_caps_apply_only_when_given(tmp_path):
    src = tmp_path / 'c.jsonl'
    src.write_text(''.join(json.dumps({'text': f'doc {i} ' * 10}) + '\n' for i in range(50)))
    assert len(list(iter_documents([str(src)]))) == 50
    assert len(list(iter_documents([str(src)], max_docs=7))) == 7
    assert len(list(iter_documents([str(src), str(src)], max_docs=7))) == 14  # per source
    assert len(list(iter_documents([str(src), str(src)], max_chars=200))) == 4  # in all: 60 characters each


def test_a_source_without_documents_is_named(tmp_path):
    good, empty = tmp_path / 'good.txt', tmp_path / 'empty.txt'
    good.write_text('text')
    empty.write_text(' \n\t\n\r\n')
    with pytest.raises(ValueError, match=f"source '{empty}' gave no documents"):
        list(iter_documents([str(good), str(empty)]))


@pytest.mark.parametrize('source, error, message', [
    ('missing.txt', FileNotFoundError, 'no such file'),
    ('data.csv', ValueError, "allowed are 'docstrings', .txt/.tokens/.jsonl files"),
])
def test_unreadable_sources_are_refused_by_name(tmp_path, source, error, message):
    (tmp_path / 'data.csv').write_text('a,b')
    with pytest.raises(error, match=message):
        check_sources([str(tmp_path / source)])
