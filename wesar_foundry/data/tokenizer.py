"""The tokenizer (a byte-level BPE trained here, or an existing one) and the batch encoding of
documents on every core."""

from __future__ import annotations

from collections.abc import Iterable

EOS, PAD = '<|endoftext|>', '<|pad|>'


def train_tokenizer(docs: Iterable[str], vocab_size: int):
    """A byte-level BPE with distinct EOS and PAD tokens, as a ``PreTrainedTokenizerFast``.

    ``docs`` is consumed as a stream: the trainer keeps word counts, not the text.
    PAD must differ from EOS: llm-foundry's collator masks every label equal to pad_token_id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=True,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=EOS)


def load_tokenizer(name: str):
    """An existing tokenizer (folder or hub name); llm-foundry's text loader needs its EOS."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.eos_token_id is None:
        raise ValueError(f'--tokenizer {name!r} has no eos_token, which llm-foundry requires')
    return tokenizer


class DocumentEncoder:
    """Token ids of documents, batch by batch, equal to ``tokenizer(doc, add_special_tokens=False)``.

    A fast (Rust) tokenizer encodes a batch on every core (``encode_batch``: Rayon threads, the GIL
    released); it is a copy of the tokenizer without truncation or padding, so a hub tokenizer
    whose file sets a max length does not cut documents. A slow tokenizer falls back to its own
    batch call, on one core.
    """

    def __init__(self, tokenizer) -> None:
        self._slow = None if getattr(tokenizer, 'is_fast', False) else tokenizer
        if self._slow is None:
            from tokenizers import Tokenizer
            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.no_truncation()
            backend.no_padding()
            # encode_batch_fast (tokenizers >= 0.21) skips the character offsets nobody reads here.
            self._encode_batch = getattr(backend, 'encode_batch_fast', backend.encode_batch)

    def encode(self, docs: list[str]) -> list[list[int]]:
        if self._slow is not None:
            return self._slow(docs, add_special_tokens=False)['input_ids']
        return [e.ids for e in self._encode_batch(docs, add_special_tokens=False)]
