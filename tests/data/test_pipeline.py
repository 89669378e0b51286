"""``prepare``: sources → a loadable tokenizer → MDS that llm-foundry's text loader reads, streamed,
with no empty split written silently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streaming import StreamingDataset
from transformers import AutoTokenizer

from wesar_foundry.commands.cli import main
from wesar_foundry.data import MANIFEST, PrepareConfig, is_val, prepare
from wesar_foundry.data import pipeline, sources

TEXT = '\n\n'.join(f'Paragraph {i}: the quick brown fox jumps over the lazy dog number {i * 7}.' for i in range(400))


def _tokens(folder, split: str) -> np.ndarray:
    ds = StreamingDataset(local=str(folder), split=split, shuffle=False)
    return np.concatenate([ds[i]['tokens'] for i in range(len(ds))])


def test_embedded_default_gives_a_tokenizer_with_distinct_pad_and_eos(tiny_data):
    tok = AutoTokenizer.from_pretrained(tiny_data / 'tokenizer')
    assert len(tok) == 512 and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.decode(tok('def f(x): return x')['input_ids']) == 'def f(x): return x'
    manifest = json.loads((tiny_data / MANIFEST).read_text())
    assert manifest['samples']['train'] > 10 * manifest['samples']['val'] > 0


def test_mds_samples_are_full_length_int32_tokens(tiny_data):
    ds = StreamingDataset(local=str(tiny_data), split='train', shuffle=False)
    sample = ds[0]['tokens']
    assert sample.dtype == np.int32 and sample.shape == (32,) and sample.max() < 512


@pytest.mark.parametrize('suffix', ['.txt', '.jsonl'])
def test_local_files_are_a_source(tmp_path, suffix):
    src = tmp_path / f'corpus{suffix}'
    if suffix == '.txt':
        src.write_text(TEXT)
    else:
        src.write_text('\n'.join(json.dumps({'text': p}) for p in TEXT.split('\n\n')))
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16, val_percent=20))
    ds = StreamingDataset(local=str(out), split='val', shuffle=False)
    tok = AutoTokenizer.from_pretrained(out / 'tokenizer')
    assert 'fox' in tok.decode(ds[0]['tokens'])


def test_each_split_holds_its_documents_tokens_in_order_with_an_eos_after_each(tmp_path):
    docs = [p for p in TEXT.split('\n\n')]
    src = tmp_path / 'c.jsonl'
    src.write_text('\n'.join(json.dumps({'text': d}) for d in docs))
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16, val_percent=20))
    tok = AutoTokenizer.from_pretrained(out / 'tokenizer')
    for split, want_val in (('train', False), ('val', True)):
        expected = [t for d in docs if is_val(d, 20) == want_val
                    for t in tok(d, add_special_tokens=False)['input_ids'] + [tok.eos_token_id]]
        written = _tokens(out, split)
        assert len(expected) - 16 < len(written) <= len(expected)  # the tail shorter than a sample is dropped
        assert written.tolist() == expected[:len(written)]


def test_an_existing_tokenizers_truncation_does_not_cut_documents(tmp_path):
    from tokenizers import Tokenizer
    tok_dir = prepare(PrepareConfig(out=str(tmp_path / 'base'), sources=[str(_write(tmp_path / 'c.txt', TEXT))],
                                    vocab_size=300, seq_len=16)) / 'tokenizer'
    backend = Tokenizer.from_file(str(tok_dir / 'tokenizer.json'))
    backend.enable_truncation(max_length=4)  # as some hub tokenizer files carry
    backend.save(str(tok_dir / 'tokenizer.json'))
    src = _write(tmp_path / 'long.jsonl', json.dumps({'text': TEXT[:2000]}))
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], tokenizer=str(tok_dir), seq_len=16,
                                val_percent=0))
    assert json.loads((out / MANIFEST).read_text())['samples']['train'] > 20


def test_documents_are_written_while_the_source_is_still_being_read(tmp_path, monkeypatch, tiny_data):
    monkeypatch.setattr(pipeline, 'BATCH_CHARS', 500)
    events: list[str] = []
    read, write = pipeline._batches, pipeline.SampleWriter.write

    def batches(docs, chars):
        for batch in read(docs, chars):
            events.append('read')
            yield batch

    def logged_write(self, tokens):
        events.append('write')
        write(self, tokens)

    monkeypatch.setattr(pipeline, '_batches', batches)
    monkeypatch.setattr(pipeline.SampleWriter, 'write', logged_write)
    src = _write(tmp_path / 'c.jsonl', '\n'.join(json.dumps({'text': p}) for p in TEXT.split('\n\n')))
    prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], tokenizer=str(tiny_data / 'tokenizer'),
                          seq_len=16, val_percent=0))
    assert events.count('read') > 10 and events[:4] == ['read', 'write', 'read', 'write']


def test_the_bpe_learns_from_a_bounded_sample_and_every_document_is_written(tmp_path):
    # The sample (first 6000 characters) never sees 'zyzzyva'; the data has it all the same.
    early = [' '.join(['alpha beta gamma'] * 20) for _ in range(20)]
    late = ['zyzzyva ' * 50 for _ in range(20)]
    src = _write(tmp_path / 'c.jsonl', '\n'.join(json.dumps({'text': d}) for d in early + late))
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=400, seq_len=16, val_percent=0,
                                tokenizer_sample_chars=6000))
    tok = AutoTokenizer.from_pretrained(out / 'tokenizer')
    assert len(tok(' alpha')['input_ids']) == 1 and len(tok(' zyzzyva')['input_ids']) > 3
    assert 'zyzzyva' in tok.decode(_tokens(out, 'train')[-64:])


def test_each_source_is_read_once_and_the_tokenizer_sample_spool_is_not_left_behind(tmp_path, monkeypatch):
    read, opened = sources.iter_source, []
    monkeypatch.setattr(sources, 'iter_source', lambda source, *args: (opened.append(source), read(source, *args))[1])
    src = _write(tmp_path / 'c.txt', TEXT)
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16,
                                tokenizer_sample_chars=5000))
    assert opened == [str(src)]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, 'tokenizer', 'train', 'val']


def test_progress_shows_documents_tokens_and_tokens_per_second(tmp_path, capsys):
    prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(_write(tmp_path / 'c.txt', TEXT))], vocab_size=300,
                          seq_len=16))
    lines = [line for line in capsys.readouterr().err.splitlines() if 'tokens/s' in line]
    assert lines and all(' documents, ' in line and ' tokens (train ' in line for line in lines)


def test_a_second_prepare_with_the_same_config_reuses_and_another_config_is_refused(tmp_path, capsys):
    src = _write(tmp_path / 'c.txt', TEXT)
    cfg = PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16)
    prepare(cfg)
    stamp = (tmp_path / 'd' / MANIFEST).stat().st_mtime_ns
    prepare(cfg)
    assert (tmp_path / 'd' / MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='--force'):
        prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=301, seq_len=16))


def test_force_never_deletes_a_folder_that_prepare_did_not_make(tmp_path):
    src = _write(tmp_path / 'c.txt', TEXT)
    notes = tmp_path / 'notes'
    (notes / 'sub').mkdir(parents=True)
    (notes / 'thesis.tex').write_text('months of work')
    for force in (False, True):
        with pytest.raises(FileExistsError, match=r'is not a prepared dataset \(it holds sub, thesis.tex\).*even with --force'):
            prepare(PrepareConfig(out=str(notes), sources=[str(src)], vocab_size=300, seq_len=16), force=force)
    assert (notes / 'thesis.tex').read_text() == 'months of work'


def test_force_replaces_a_dataset_but_not_files_kept_beside_it(tmp_path):
    src = _write(tmp_path / 'c.txt', TEXT)
    cfg = PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16)
    prepare(cfg)
    other = PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=301, seq_len=16)
    prepare(other, force=True)  # a dataset and nothing else: replaced
    assert json.loads((tmp_path / 'd' / MANIFEST).read_text())['config']['vocab_size'] == 301
    (tmp_path / 'd' / 'README.txt').write_text('mine')
    with pytest.raises(FileExistsError, match=r'it holds README.txt'):
        prepare(cfg, force=True)
    assert (tmp_path / 'd' / 'README.txt').read_text() == 'mine'


def test_a_folder_built_before_an_option_existed_is_reused_at_that_options_default(tmp_path):
    cfg = PrepareConfig(out=str(tmp_path / 'd'), sources=[str(_write(tmp_path / 'c.txt', TEXT))], vocab_size=300,
                        seq_len=16, max_chars=4_000_000)
    prepare(cfg)
    manifest = tmp_path / 'd' / MANIFEST
    old = json.loads(manifest.read_text())
    del old['config']['tokenizer_sample_chars']
    manifest.write_text(json.dumps(old))
    stamp = manifest.stat().st_mtime_ns
    prepare(cfg)
    assert manifest.stat().st_mtime_ns == stamp


def test_bad_sources_fail_before_any_work_and_write_nothing(tmp_path, capsys):
    assert main(['prepare', '--out', str(tmp_path / 'd'), '--source', str(tmp_path / 'missing.txt')]) == 2
    assert 'no such file' in capsys.readouterr().err
    (tmp_path / 'x.csv').write_text('a,b')
    assert main(['prepare', '--out', str(tmp_path / 'd'), '--source', str(tmp_path / 'x.csv')]) == 2
    assert "allowed are 'docstrings'" in capsys.readouterr().err
    assert not (tmp_path / 'd').exists()


@pytest.mark.parametrize('args, message', [
    (['--max-docs', '-1'], '--max-docs must be a positive integer (leave it out for no cap), got -1'),
    (['--max-chars', '-5'], '--max-chars must be a positive integer (leave it out for no cap), got -5'),
    (['--max-chars', '0'], '--max-chars must be a positive integer (leave it out for no cap), got 0'),
    (['--val-percent', '101'], '--val-percent must be in [0, 100], got 101'),
    (['--seq-len', '1'], '--seq-len must be >= 2, got 1'),
    (['--vocab-size', '100'], '--vocab-size must be >= 300'),
    (['--tokenizer-sample-chars', '0'], '--tokenizer-sample-chars must be a positive integer, got 0'),
])
def test_bad_options_are_refused_by_name_before_any_work(tmp_path, capsys, args, message):
    src = _write(tmp_path / 'c.txt', TEXT)
    assert main(['prepare', '--out', str(tmp_path / 'd'), '--source', str(src), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'd').exists()


def test_a_failed_prepare_leaves_no_half_written_output(tmp_path):
    src = _write(tmp_path / 'c.txt', 'too short')
    with pytest.raises(ValueError, match='no sample of --seq-len 64'):
        prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=64))
    assert list(tmp_path.iterdir()) == [src]


def test_a_val_split_without_documents_fails_naming_val_percent(tmp_path, capsys):
    # One paragraph (as WikiText read at exact '\n\n' once was): every document lands in train.
    src = _write(tmp_path / 'one.txt', ' '.join(TEXT.split('\n\n')))
    assert main(['prepare', '--out', str(tmp_path / 'd'), '--source', str(src), '--vocab-size', '300',
                 '--seq-len', '16']) == 2
    err = capsys.readouterr().err
    assert 'the val split got no document: the sources gave 1 document(s) and --val-percent 5' in err
    assert 'pass --val-percent 0 for a train-only folder' in err
    assert not (tmp_path / 'd').exists()


def test_a_val_split_shorter_than_a_sample_fails_naming_val_percent(tmp_path):
    docs = [f'document {i} ' + 'word ' * 30 for i in range(40)]
    src = _write(tmp_path / 'c.jsonl', '\n'.join(json.dumps({'text': d}) for d in docs))
    assert 1 <= sum(is_val(d, 5) for d in docs) <= 3  # the data: a few short documents hash into val
    with pytest.raises(ValueError, match='the val split has .* tokens: no sample of --seq-len 512; add text, raise --val-percent'):
        prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=512))


@pytest.mark.parametrize('val_percent, written, absent', [(100, 'val', 'train'), (0, 'train', 'val')])
def test_val_percent_100_or_0_writes_one_split_and_says_so(tmp_path, capsys, val_percent, written, absent):
    src = _write(tmp_path / 'wiki.txt', TEXT)
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16,
                                val_percent=val_percent))
    assert (out / written).is_dir() and not (out / absent).exists()
    samples = json.loads((out / MANIFEST).read_text())['samples']
    assert samples == {written: len(StreamingDataset(local=str(out), split=written, shuffle=False))}
    assert f'--val-percent {val_percent}: writing {written} only' in capsys.readouterr().err


def _write(path, text: str):
    path.write_text(text)
    return path
