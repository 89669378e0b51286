"""``prepare``: sources → a loadable tokenizer → MDS that llm-foundry's text loader reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streaming import StreamingDataset
from transformers import AutoTokenizer

from wesar_foundry.cli import main
from wesar_foundry.data import MANIFEST, PrepareConfig, prepare

TEXT = '\n\n'.join(f'Paragraph {i}: the quick brown fox jumps over the lazy dog number {i * 7}.' for i in range(400))


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


def test_a_second_prepare_with_the_same_config_reuses_and_another_config_is_refused(tmp_path, capsys):
    src = tmp_path / 'c.txt'
    src.write_text(TEXT)
    cfg = PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16)
    prepare(cfg)
    stamp = (tmp_path / 'd' / MANIFEST).stat().st_mtime_ns
    prepare(cfg)
    assert (tmp_path / 'd' / MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='--force'):
        prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=301, seq_len=16))


def test_bad_sources_fail_before_any_work_and_write_nothing(tmp_path, capsys):
    assert main(['prepare', '--out', str(tmp_path / 'd'), '--source', str(tmp_path / 'missing.txt')]) == 2
    assert 'no such file' in capsys.readouterr().err
    (tmp_path / 'x.csv').write_text('a,b')
    assert main(['prepare', '--out', str(tmp_path / 'd'), '--source', str(tmp_path / 'x.csv')]) == 2
    assert "allowed are 'docstrings'" in capsys.readouterr().err
    assert not (tmp_path / 'd').exists()


def test_a_failed_prepare_leaves_no_half_written_output(tmp_path):
    src = tmp_path / 'c.txt'
    src.write_text('too short')
    with pytest.raises(ValueError, match='no sample'):
        prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=64))
    assert list(tmp_path.iterdir()) == [src]


def test_val_percent_100_writes_an_eval_only_set(tmp_path):
    src = tmp_path / 'wiki.txt'
    src.write_text(TEXT)
    out = prepare(PrepareConfig(out=str(tmp_path / 'd'), sources=[str(src)], vocab_size=300, seq_len=16, val_percent=100))
    assert (out / 'val').is_dir() and not (out / 'train').exists()
    assert json.loads((out / MANIFEST).read_text())['samples'] == {'val': len(StreamingDataset(local=str(out), split='val', shuffle=False))}
