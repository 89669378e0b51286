"""Writing an export: dtype and shard-size options checked by name before any work, and an output
folder that appears whole or not at all, never over the source."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_model
from wesar_foundry.commands.cli import main as cli
from wesar_foundry.export import export_model, to_stock
from wesar_foundry.export.write import parse_dtype, parse_shard_size, save_stock, training_dtype


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize('given,want', [('fp32', torch.float32), ('bfloat16', torch.bfloat16), ('fp16', torch.float16),
                                        (torch.bfloat16, torch.bfloat16)])
def test_a_dtype_is_named_short_as_the_command_does_or_long_as_hf_checkpointer_does(given, want):
    assert parse_dtype(given) is want


@pytest.mark.parametrize('precision,want', [('fp32', torch.float32), ('amp_bf16', torch.bfloat16),
                                            ('amp_fp16', torch.float16), ('amp_fp8', torch.bfloat16)])
def test_the_default_dtype_is_the_one_the_training_precision_computed_in(precision, want):
    assert training_dtype(precision) is want


@pytest.mark.parametrize('given,want', [(1000, 1000), ('100KB', 100_000), ('500MB', 500_000_000), ('1.5gb', 1_500_000_000)])
def test_a_shard_size_counts_in_powers_of_1000_as_hugging_face_does(given, want):
    assert parse_shard_size(given) == want


@pytest.mark.parametrize('given', ['1XB', '', 0, -5, True, 1.5])
def test_a_shard_size_that_is_not_a_size_is_refused_by_name(given):
    with pytest.raises(ValueError, match=r"--max-shard-size=.* is not a file size"):
        parse_shard_size(given)


def test_dtype_is_checked_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"--dtype='fp8'.*allowed: fp32, bf16, fp16"):
        export_model(build_model().model, tmp_path / 'out', dtype='fp8')


def test_a_bad_max_shard_size_is_refused_before_any_work(tmp_path, capsys):
    # Before the checkpoint is even looked for: this one does not exist.
    folder = tmp_path / 'ckpt'
    assert cli(['export', str(folder), str(tmp_path / 'out'), '--max-shard-size', '1XB']) == 2
    assert "--max-shard-size='1XB' is not a file size" in capsys.readouterr().err


def test_existing_output_dir_is_kept_without_force_and_replaced_with_it(tmp_path):
    model = build_model().model.eval()
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='already exists.*--force'):
        export_model(model, out)
    assert listing(out) == ['keep.txt']
    export_model(model, out, force=True)
    assert 'keep.txt' not in listing(out) and 'model.safetensors' in listing(out)
    assert listing(tmp_path) == ['out']  # no staging or trash folder left behind


def test_max_shard_size_splits_the_weights_into_bounded_files(tmp_path):
    export_model(build_model().model.eval(), tmp_path / 'out', max_shard_size='100KB')
    files = [p for p in (tmp_path / 'out').iterdir() if p.suffix == '.safetensors']
    assert len(files) > 1 and (tmp_path / 'out' / 'model.safetensors.index.json').is_file()
    # The largest tensor (the 512 x 32 fp32 embedding, 64 KiB) fits: every file is bounded (+ its JSON header).
    assert all(p.stat().st_size <= 100_000 + 10_000 for p in files)


def test_a_failure_while_writing_leaves_no_folder_and_keeps_the_one_it_would_replace(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')

    def fail(folder):
        assert (folder / 'config.json').is_file()  # called on the written folder, before the rename
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        save_stock(to_stock(build_model().model.eval()), out, force=True, finish=fail)
    assert listing(tmp_path) == ['out'] and listing(out) == ['keep.txt']
