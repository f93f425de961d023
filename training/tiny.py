"""A tiny GPT-2 and byte-level BPE tokenizer built offline: for tests, CI and the demo."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from contract.dialogue import MARKERS

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"  # the kinds of special tokens ruDialoGPT has
VOCAB_SIZE = 1500  # upper bound; a small corpus may yield fewer merges
SHAPE = dict(n_layer=2, n_head=2, n_embd=64, n_positions=512)  # about 0.2 M parameters


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with the dialogue markers as atomic special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS, UNK, *MARKERS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(MARKERS),
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: generate refuses them
        model_max_length=SHAPE["n_positions"],
        padding_side="right",  # what training's collator pads (load_base sets it for every base)
    )


def build_tiny(texts: Iterable[str], seed: int = 0) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A freshly initialized tiny GPT-2 and a tokenizer trained on `texts`; deterministic in `seed`."""
    tokenizer = train_tokenizer(texts)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPE,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config), tokenizer  # training.train.load_base sets where generation stops
