"""The one MPT training run the composer and adapter tests read (built once per session)."""

from __future__ import annotations

import pytest
import torch
from llmfoundry.command_utils import train

from tests.foundry.mpt.helpers import INPUT_IDS, load_in_clean_process, mpt_cfg


@pytest.fixture(scope='session')
def run(tiny_data, tmp_path_factory):
    """5 batches straight with a Composer checkpoint at ba3; then from that checkpoint to ba5 again,
    with the checkpointer exporting at the end; the export loaded in a clean process."""
    root = tmp_path_factory.mktemp('mpt')
    straight = train(mpt_cfg(tiny_data, 'mpt-straight', 'max_duration=5ba', f'save_folder={root / "ck"}',
                             'save_interval=3ba'))
    exporter = {'wesar_mpt_hf_checkpointer': {'save_folder': str(root / 'hf'), 'save_interval': '5ba'}}
    resumed = train(mpt_cfg(tiny_data, 'mpt-resumed', 'max_duration=5ba', f'load_path={root / "ck" / "ep0-ba3-rank0.pt"}',
                            callbacks=exporter))
    model = resumed.state.model.model.eval()
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits
    folder = root / 'hf' / 'huggingface' / 'ba5'
    return {'straight': straight, 'resumed': resumed, 'logits': logits, 'folder': folder,
            'loaded': load_in_clean_process(folder, root / 'loader')}
