"""What every synthetic builder shares: a locally trained tokenizer and the tiny decoder's shape."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from halp.data.demo import COLOURS, SHAPES

_WORDS = [
    "is there a in the image what color shape which closest to left of right above below why",
    "touching yes no there is not I cannot see picture shows describe the user assistant system",
    "the answer looks like object objects square circle triangle next behind front small large",
]


def _corpus() -> list[str]:
    lines = list(_WORDS)
    lines += [f"Is there a {c} {s} in the image? yes no" for c in COLOURS for s in SHAPES]
    return lines * 20


def train_tokenizer(
    specials: list[str], vocab_size: int = 512, adds_bos: bool = False, **kwargs
) -> PreTrainedTokenizerFast:
    """Train on a fixed corpus; `specials` become special tokens with the lowest ids, first = unk.

    `adds_bos`: encoding with special tokens prepends `kwargs["bos_token"]`, as Llama-3's and Gemma's
    tokenizers do (so a template that renders the BOS too would give two, as with the real ones).
    `padding_side="left"` must be a constructor argument: set afterwards it is not saved.
    """
    bpe = Tokenizer(models.BPE(unk_token=specials[0]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    if adds_bos:
        bos = kwargs["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token=specials[0], padding_side="left", **kwargs
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tokenizer


# The tiny language model of every architecture: 4 blocks, so [0, 0.5, 1.0] are three distinct layers.
TINY_DECODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
# The trained demo organisms' language model (halp.organism): wider than tiny so it can learn the demo world.
DEMO_DECODER = TINY_DECODER | dict(hidden_size=128, intermediate_size=384, tie_word_embeddings=True)


def token_settings(tokenizer: PreTrainedTokenizerFast, bos: str, eos: str | list[str]) -> dict:
    """The text config's vocabulary size and special ids, taken from the tokenizer itself."""
    eos_ids = tokenizer.convert_tokens_to_ids(eos)
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(bos),
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
