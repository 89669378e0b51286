"""``wesar-foundry``'s argument parsing: a malformed or contradictory option is named, before any work."""

from __future__ import annotations

import re

import pytest

from wesar_foundry.commands.cli import main


@pytest.mark.parametrize('args, message', [(['--seeds', '17,'], r"--seeds '17,': expected comma-separated ints"),
                                           (['--lrs', '1e-3,,3e-3'], r"--lrs '1e-3,,3e-3': expected comma-separated floats"),
                                           (['--max-chars', '0'], r'demo --max-chars must be >= 1, got 0')])
def test_demo_names_the_option_of_a_malformed_list(tmp_path, capsys, args, message):
    assert main(['demo', '--out', str(tmp_path / 'r'), '--data', str(tmp_path / 'd'), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / 'd').exists()


def test_demo_refuses_lr_and_lrs_together_instead_of_ignoring_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['demo', '--out', str(tmp_path / 'r'), '--lr', '1e-3', '--lrs', '1e-3,3e-3'])
    assert e.value.code == 2 and 'not allowed with argument' in capsys.readouterr().err
