"""The tokenizer: a trained byte-level BPE with distinct EOS and PAD, and batch encoding equal to
the tokenizer's own call, never truncated."""

from __future__ import annotations

import copy

import pytest

from wesar_foundry.data.tokenizer import EOS, PAD, DocumentEncoder, load_tokenizer, train_tokenizer

DOCS = [f'Paragraph {i}: the quick brown fox jumps over the lazy dog number {i * 7}.' for i in range(200)]


@pytest.fixture(scope='module')
def tokenizer():
    return train_tokenizer(iter(DOCS), vocab_size=300)


def test_the_trained_bpe_round_trips_text_and_keeps_eos_and_pad_apart(tokenizer):
    # llm-foundry's collator masks every label equal to pad_token_id: an EOS equal to PAD would vanish.
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == PAD
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer('def f(x): return x')['input_ids']) == 'def f(x): return x'


def test_batch_encoding_equals_the_tokenizers_own_call_even_when_its_file_truncates(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    truncating = load_tokenizer(str(tmp_path))
    truncating.backend_tokenizer.enable_truncation(max_length=4)  # as some hub tokenizer files carry
    docs = DOCS[:5] + [' '.join(DOCS)]
    got = DocumentEncoder(truncating).encode(docs)
    assert got == tokenizer(docs, add_special_tokens=False)['input_ids']
    assert len(got[-1]) > 100  # the long document was not cut to 4 tokens


def test_an_existing_tokenizer_without_eos_is_refused_by_name(tokenizer, tmp_path):
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    no_eos.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"--tokenizer '.*' has no eos_token"):
        load_tokenizer(str(tmp_path))
