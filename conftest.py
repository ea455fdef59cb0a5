"""Root pytest configuration: nbval options that must hold from any folder.

Notebooks run in a fresh kernel of the current environment (``--nbval-current-env``), and the
text that differs from machine to machine is replaced before comparison (``--nbval-sanitize-with``).
"""

from pathlib import Path

ROOT = Path(__file__).parent


def pytest_configure(config):
    if hasattr(config.option, "nbval_current_env"):
        config.option.nbval_current_env = True
        if not config.option.nbval_sanitize_with:
            config.option.nbval_sanitize_with = str(ROOT / "rlhf_kit" / "data" / "nbval_sanitize.cfg")
