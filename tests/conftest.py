"""Shared fixtures: a tiny world model that trains in seconds, for tests of every stage.

Tests never build the default embedded model unless they are marked ``slow``; the tiny model
below has the same tokenizer, chat template and architecture, only smaller and less trained.
"""

from __future__ import annotations

import pytest

# rlhf_kit.pretrain imports torch and transformers (seconds): only the fixtures that need it do.
TINY_PRETRAIN = dict(n_documents=1500, vocab_size=512, n_layer=2, n_embd=64, n_head=2,
                     block_size=64, batch_size=16, steps=40, warmup=5, log_every=5)


@pytest.fixture(scope="session")
def tiny_pretrain():
    """The configuration of the tiny model (tests may override fields with dataclasses.replace)."""
    from rlhf_kit.pretrain import PretrainConfig

    return PretrainConfig(**TINY_PRETRAIN)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tiny_pretrain):
    """A folder holding a tiny pretrained model and its tokenizer (about 10 s to build)."""
    from rlhf_kit.pretrain import build_base

    path = tmp_path_factory.mktemp("tiny-base")
    build_base(path, tiny_pretrain, progress=False)
    return path
