"""`wesar-foundry eval`: the paper's WikiText and LAMBADA perplexities through lm-eval, offline.

A tiny stock `LlamaForCausalLM` (what the export writes) is evaluated on small local files by the
CLI in a fresh, offline process, and both numbers are checked against a direct computation with
transformers on the same data.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('lm_eval', reason="needs the 'eval' extra: pip install -e '.[eval]'")

from wesar_foundry.commands.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MAX_POS = 256  # every document below is shorter: one rolling window per document, as computed here

# Three articles in the WikiText split-file layout: a level-1 title starts each; ' = = ' sections,
# '@-@' / '@,@' number markers and spaced punctuation exercise lm-eval's detokenizer and word count.
PAGES = [
    ' = Alpha Lighthouse = \n \n The Alpha Lighthouse is a 12 @-@ metre tower on the north coast . '
    'It was built in 1 @,@ 850 , and its lamp is visible for 20 miles . \n \n = = History = = \n \n '
    'The first keeper , John Smith , lived there with his family . \n',
    ' = Beta River = \n \n The Beta River flows through three counties ; its basin covers 400 km2 . '
    'Fishing is common in the upper reaches . \n',
    ' = Gamma ( album ) = \n \n Gamma is the second album by the band . It reached number 5 on the chart , '
    'and " Blue Light " was its single . \n \n = = Track listing = = \n \n The album has ten songs . \n',
]
# LAMBADA in both layouts the local task accepts; the target is the passage's last word.
LAMBADA_TEXT = [
    {'text': 'She opened the door and saw the garden covered in snow . The garden was white with snow'},
    {'text': 'The keeper climbed the stairs every night to light the lamp . He loved the lamp'},
]
LAMBADA_CTX = [
    {'context': 'The river was cold and fast , but the children still wanted to swim in the',
     'continuation': 'river'},
]


def _lambada_passages() -> list[str]:
    return [r['text'] for r in LAMBADA_TEXT] + [r['context'] + ' ' + r['continuation'] for r in LAMBADA_CTX]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory) -> Path:
    """A tiny stock Llama with a locally trained byte-level BPE (distinct eos and pad), saved as HF."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp('exported')
    bpe = ByteLevelBPETokenizer()
    corpus = PAGES + _lambada_passages() + ['The quick brown fox jumps over the lazy dog .'] * 3
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=['<|endoftext|>', '<|pad|>'])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token='<|endoftext|>', pad_token='<|pad|>')
    tok.save_pretrained(out)
    torch.manual_seed(0)
    # A wide init gives peaked, position-dependent predictions: a real test of the token alignment.
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                         initializer_range=0.2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope='module')
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp('evaldata')
    wikitext = d / 'wiki.test.tokens'
    # As the released split files: a blank ' ' line first, articles joined by newlines.
    wikitext.write_text(' \n' + '\n'.join(PAGES))
    lambada = d / 'lambada.jsonl'
    lambada.write_text(''.join(json.dumps(r) + '\n' for r in LAMBADA_TEXT + LAMBADA_CTX))
    return wikitext, lambada


def _direct(model_dir: Path) -> dict[str, float]:
    """The two metrics computed with transformers alone, by their lm-eval definitions."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    prefix = tok.eos_token_id  # no BOS: lm-eval predicts a document's first token after EOS

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)

    # WikiText: log-likelihood of each detokenized article; words counted on the original page.
    nll, words = 0.0, 0
    for page in PAGES:
        ids = tok(wikitext_detokenizer({'page': page}), add_special_tokens=False)['input_ids']
        assert len(ids) < MAX_POS
        lp = logprobs([prefix] + ids[:-1])
        nll -= lp[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
        words += len(re.split(r'\s+', page))
    # LAMBADA: log-likelihood of ' ' + last word given the rest of the passage.
    target_nll, hits = [], 0
    for passage in _lambada_passages():
        context, word = passage.rsplit(' ', 1)
        ctx = tok(context, add_special_tokens=False)['input_ids']
        whole = tok(context + ' ' + word, add_special_tokens=False)['input_ids']
        target = whole[len(ctx):]
        lp = logprobs(whole[:-1])[len(ctx) - 1:]
        target_nll.append(-lp[torch.arange(len(target)), torch.tensor(target)].sum().item())
        hits += int(lp.argmax(-1).tolist() == target)
    n = len(target_nll)
    return {'word_perplexity': math.exp(nll / words), 'lambada_perplexity': math.exp(sum(target_nll) / n),
            'lambada_acc': hits / n}


@pytest.mark.slow
def test_eval_offline_matches_direct_computation(model_dir, data_files, tmp_path):
    wikitext, lambada = data_files
    out = tmp_path / 'results.json'
    # A fresh process, offline, with empty caches.
    env = _offline_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, '-m', 'wesar_foundry.commands.cli', 'eval', str(model_dir), '--wikitext-file', str(wikitext),
         '--lambada-file', str(lambada), '--batch-size', '2', '--out', str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads(out.read_text())
    wiki, lamb = result['tasks']['wikitext_local'], result['tasks']['lambada_openai_local']
    assert (wiki['docs'], lamb['docs']) == (len(PAGES), len(_lambada_passages()))
    expected = _direct(model_dir)
    assert wiki['word_perplexity'] == pytest.approx(expected['word_perplexity'], rel=1e-4)
    assert lamb['perplexity'] == pytest.approx(expected['lambada_perplexity'], rel=1e-4)
    assert lamb['acc'] == pytest.approx(expected['lambada_acc'])
    # The printed table carries the same numbers.
    assert f'| wikitext_local | word_perplexity | {wiki["word_perplexity"]:.4f} | 3 |' in proc.stdout
    assert f'| lambada_openai_local | perplexity | {lamb["perplexity"]:.4f} | 3 |' in proc.stdout


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """os.environ offline for the hub and datasets, with empty caches: nothing is fetched.
    Without the single-rank variables Composer's train() leaves in os.environ (earlier tests):
    with WORLD_SIZE set, accelerate would try an env:// rendezvous."""
    dist_vars = {'RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT'}
    return {**{k: v for k, v in os.environ.items() if k not in dist_vars}, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1',
            'TRANSFORMERS_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf-home'), 'HF_DATASETS_CACHE': str(tmp_path / 'datasets-cache')}


@pytest.mark.slow
def test_the_lm_eval_command_printed_by_write_tasks_runs_the_same_tasks(model_dir, data_files, tmp_path, capsys):
    """Plain lm-eval on the folder --write-tasks wrote, by the command it printed, gives the numbers."""
    wikitext, lambada = data_files
    tasks = tmp_path / 'tasks'
    assert main(['eval', str(model_dir), '--write-tasks', str(tasks), '--wikitext-file', str(wikitext),
                 '--lambada-file', str(lambada), '--batch-size', '2']) == 0
    command = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert command[0] == 'lm_eval'
    lm_eval = [str(Path(sys.executable).with_name('lm_eval'))] + command[1:] + ['--output_path', str(tmp_path / 'out')]
    proc = subprocess.run(lm_eval, env=_offline_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / 'out').rglob('results_*.json')).read_text())['results']
    expected = _direct(model_dir)
    assert results['wikitext_local']['word_perplexity,none'] == pytest.approx(expected['word_perplexity'], rel=1e-4)
    assert results['lambada_openai_local']['perplexity,none'] == pytest.approx(expected['lambada_perplexity'], rel=1e-4)


@pytest.mark.parametrize('args, message', [
    (['{missing}'], 'model_dir: no such folder'),
    (['{model}', '--wikitext-file', '{missing}'], '--wikitext-file: no such file'),
    (['{model}', '--lambada-file', '{missing}'], '--lambada-file: no such file'),
    (['{model}', '--tasks', 'wikitext,hellaswag'], '--tasks: unknown task(s) hellaswag; allowed: wikitext'),
    (['{model}', '--dtype', 'fp8'], "--dtype='fp8'; allowed: float32"),
])
def test_eval_errors_name_the_option(model_dir, tmp_path, capsys, args, message):
    argv = ['eval'] + [a.format(model=model_dir, missing=tmp_path / 'nope') for a in args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_shipped_task_configs_mirror_the_stock_tasks():
    """The local YAMLs keep the stock tasks' output type, prompts and metrics; only the data differs."""
    import lm_eval

    from wesar_foundry.commands.eval import TASK_DIR
    stock_dir = Path(lm_eval.__file__).parent / 'tasks'
    pairs = [('wikitext/wikitext.yaml', 'wikitext_local.yaml'), ('lambada/lambada_openai.yaml', 'lambada_openai_local.yaml')]
    keys = ('output_type', 'doc_to_text', 'doc_to_target', 'metric_list', 'doc_to_decontamination_query')
    for stock, local in pairs:
        s, l_ = _yaml(stock_dir / stock), _yaml(TASK_DIR / local)
        for key in keys:
            if key == 'doc_to_target' and stock.startswith('wikitext'):
                assert l_[key].endswith('wikitext_detokenizer') and s[key].endswith('wikitext_detokenizer')
            else:
                assert l_[key] == s[key], (local, key)


def _yaml(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.add_constructor('!function', lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=Loader)


def test_yamls_eval_in_a_checkout_is_the_shipped_task_folder():
    """A checkout's yamls/eval is the task folder the package ships."""
    from wesar_foundry.commands.eval import TASK_DIR
    assert (ROOT / 'yamls' / 'eval').resolve() == TASK_DIR.resolve()


def test_eval_without_lm_eval_installed_says_how_to_install_it(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'lm_eval', None)  # what a missing package raises: ModuleNotFoundError
    assert main(['eval', str(model_dir)]) == 2
    assert "pip install -c constraints.txt -e '.[eval]'" in capsys.readouterr().err
