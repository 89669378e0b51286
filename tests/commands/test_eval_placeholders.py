"""The offline task configs' data placeholders: a config edited by hand is refused before any work
(its data path would silently not be filled in), and ``--write-tasks DIR`` writes filled-in copies
for plain ``lm_eval --include_path DIR`` so that the shipped files never need editing.

None of this needs lm-eval: every test runs with ``lm_eval`` made unimportable, so a check that came
after lm-eval's import would fail here with the "not installed" error instead.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from wesar_foundry.commands.cli import main
from wesar_foundry.commands.eval import LOCAL_TASKS, TASK_DIR


@pytest.fixture(autouse=True)
def no_lm_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, 'lm_eval', None)  # importing it raises ModuleNotFoundError


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    model = tmp_path / 'exported'
    model.mkdir()
    (model / 'config.json').write_text('{}')
    wikitext, lambada = tmp_path / 'wiki.test.tokens', tmp_path / 'lambada.jsonl'
    wikitext.write_text(' = A = \n a b . \n')
    lambada.write_text('{"text": "a b"}\n')
    return {'model': model, 'wikitext': wikitext, 'lambada': lambada}


def shipped() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in TASK_DIR.iterdir() if p.is_file()}


@pytest.mark.parametrize('key', sorted(LOCAL_TASKS))
def test_a_task_config_with_its_placeholder_edited_away_is_refused_naming_file_placeholder_and_option(
        key, files, tmp_path, capsys):
    task = LOCAL_TASKS[key]
    edited = Path(shutil.copytree(TASK_DIR, tmp_path / 'tasks'))
    # What the old comment invited: the placeholder replaced by the data file's path.
    text = (edited / task.yaml).read_text()
    assert text.count(task.placeholder) == 1
    (edited / task.yaml).write_text(text.replace(task.placeholder, str(files[key])))
    argv = ['eval', str(files['model']), task.option, str(files[key]), '--task-dir', str(edited)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(edited / task.yaml) in err and task.placeholder in err
    assert 'restore the file' in err and f'pass the data file with {task.option} instead' in err
    assert 'not installed' not in err  # refused before lm-eval was imported


def test_write_tasks_fills_in_copies_and_prints_the_lm_eval_command(files, tmp_path, capsys):
    before = shipped()
    out = tmp_path / 'eval-tasks'
    assert main(['eval', '--write-tasks', str(out), '--wikitext-file', str(files['wikitext']),
                 '--lambada-file', str(files['lambada']), '--batch-size', '2']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['lambada_openai_local.yaml', 'wesar_eval_utils.py',
                                                     'wikitext_local.yaml']
    for key, task in LOCAL_TASKS.items():
        text = (out / task.yaml).read_text()
        assert task.placeholder not in text and f'test: {json.dumps(str(files[key].resolve()))}' in text
    assert shipped() == before  # the package's files untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no staging left behind
    command = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert command[:3] == ['lm_eval', '--model', 'hf']
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags == {'--model_args': 'pretrained=<exported model folder>,dtype=float32',
                     '--include_path': str(out.resolve()), '--tasks': 'wikitext_local,lambada_openai_local',
                     '--batch_size': '2', '--device': 'cpu'}


def test_write_tasks_names_the_model_in_the_command_when_given(files, tmp_path, capsys):
    out = tmp_path / 'eval-tasks'
    assert main(['eval', str(files['model']), '--write-tasks', str(out), '--lambada-file', str(files['lambada'])]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['lambada_openai_local.yaml', 'wesar_eval_utils.py']
    command = capsys.readouterr().out.strip().splitlines()[-1]
    assert f'pretrained={files["model"].resolve()},dtype=float32' in command and '--tasks lambada_openai_local' in command


@pytest.mark.parametrize('extra, message', [
    ([], '--write-tasks: give --wikitext-file and/or --lambada-file'),
    (['--wikitext-file', '{wikitext}', '--out', '{tmp}/r.json'], '--out: with --write-tasks nothing is evaluated'),
])
def test_write_tasks_refuses_what_it_would_ignore(files, tmp_path, capsys, extra, message):
    out = tmp_path / 'eval-tasks'
    argv = ['eval', '--write-tasks', str(out)] + [a.format(wikitext=files['wikitext'], tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_write_tasks_refuses_an_existing_folder_and_leaves_it_alone(files, tmp_path, capsys):
    out = tmp_path / 'eval-tasks'
    out.mkdir()
    (out / 'mine.txt').write_text('keep')
    assert main(['eval', '--write-tasks', str(out), '--wikitext-file', str(files['wikitext'])]) == 2
    assert f'--write-tasks: {out} exists' in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ['mine.txt']


def test_eval_without_a_model_folder_or_write_tasks_names_model_dir(capsys):
    assert main(['eval', '--wikitext-file', 'x']) == 2
    assert 'model_dir: missing' in capsys.readouterr().err
