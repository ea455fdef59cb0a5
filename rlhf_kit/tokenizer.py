"""Tokenizer: text to token ids, and the chat template every later stage speaks.

A language model never sees characters, only integer ids. The embedded model uses a byte-level
BPE tokenizer (as GPT-2 does) trained by the ``tokenizers`` library on the toy world's corpus:
it starts from the 256 bytes and merges the most frequent neighbouring pairs until it has
``vocab_size`` tokens, so every string can be encoded and frequent words become one token.

Special tokens:

* ``<|endoftext|>`` separates documents in pretraining (it is the BOS, EOS and pad token);
* ``<|system|>``, ``<|user|>``, ``<|assistant|>`` open a turn of a conversation and ``<|end|>``
  closes it.

The chat template renders a list of ``{"role", "content"}`` messages. The assistant's turns are
wrapped in ``{% generation %}`` / ``{% endgeneration %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` (and TRL's assistant-only loss)
knows which tokens the assistant wrote, the closing ``<|end|>`` included: a model must learn
when to stop talking. ``chat_prompt`` renders what every stage gives a model to answer one prompt:
the user's turn and the assistant's tag.

Reads the corpus from ``world.py``; writes a Hugging Face fast tokenizer with
``save_pretrained``. Taught in ``course/01_next_token_prediction.ipynb``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (EOS, SYSTEM, USER, ASSISTANT, END)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- else -%}"
    "{{ raise_exception('Unknown role ' ~ message['role'] ~ ': use system, user or assistant.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
"""Turns back to back: ``<|user|>Where does Alice live?<|end|><|assistant|>Alice lives in ...<|end|>``.

The ``{%-`` / ``-%}`` whitespace control strips the template's own line breaks, so nothing but the
turn tokens separates the turns: every token of a conversation is either a turn marker or text."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``."""
    bpe = Tokenizer(models.BPE())
    # Byte-level pre-tokenization: split on spaces and punctuation, map bytes to printable chars.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return wrap(bpe)


def wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    """A ``transformers`` tokenizer around a trained ``tokenizers`` object, with the chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, END],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"  # generation pads on the left so every prompt ends together
    return tokenizer


END_OF_TURN_TOKENS = (END, "<|im_end|>", "<|eot_id|>", "<end_of_turn>")
"""The kit's end-of-turn token, then those of common hub chat templates (ChatML as in SmolLM2 and
Qwen, Llama 3, Gemma), so that generation stops where a hub model's turn ends."""


def end_of_turn_id(tokenizer) -> int:
    """The id of the token that ends an assistant's turn: the first of END_OF_TURN_TOKENS that the
    tokenizer has as a single token, else its EOS."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            return vocab[token]
    return tokenizer.eos_token_id


def chat_prompt(tokenizer, prompt: str) -> str:
    """The text a model continues to answer ``prompt``: the user's turn and the assistant's tag
    (``<|user|>Where does Alice live?<|end|><|assistant|>``). A tokenizer without a chat template (a
    hub base model) gets the prompt and a line break, as the reward model reads it (``reward.encode``)."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"
