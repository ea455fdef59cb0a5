"""rlhf-kit: the package behind the course on how ChatGPT is made.

One stage, one module, each readable on its own: ``world`` (the toy world and its internet),
``tokenizer``, ``models``, ``pretrain``, ``sampling``, ``evaluate``, and the later stages. Nothing
is imported here, so ``import rlhf_kit`` is instant and each notebook imports what it teaches.
"""

__version__ = "0.1.0"
