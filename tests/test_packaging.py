"""The two install routes (pip's pyproject.toml and conda's environment.yml) ask for the same things."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch-cpu": "torch"}


def _split(requirement: str) -> tuple[str, str]:
    """('name', 'version spec') of a requirement string, names normalised as PyPI does."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$", requirement)
    name, spec = m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")
    return CONDA_TO_PYPI.get(name, name), spec


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(_split(r) for r in data["project"]["dependencies"])


def conda_requirements() -> dict[str, str]:
    data = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for entry in data["dependencies"]:
        if isinstance(entry, str) and not entry.startswith(("python", "pip")):
            name, spec = _split(entry)
            out[name] = spec
    return out


def test_environment_yml_matches_pyproject():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert set(conda) == set(pip), (
        f"only in pyproject.toml: {sorted(set(pip) - set(conda))}; "
        f"only in environment.yml: {sorted(set(conda) - set(pip))}"
    )
    differing = {name: (pip[name], conda[name]) for name in pip if pip[name] != conda[name]}
    assert not differing, f"version ranges differ (pyproject, environment.yml): {differing}"


def test_environment_installs_the_checkout():
    data = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(e["pip"] for e in data["dependencies"] if isinstance(e, dict))
    assert "-e ." in pip_section
    assert data["channels"][0] == "conda-forge" and "nodefaults" in data["channels"]


def test_the_parser_sees_a_drift():
    """The comparison above is only worth something if a changed range is noticed."""
    assert _split("trl>=1.16,<2") == ("trl", ">=1.16,<2")
    assert _split("pytorch-cpu >=2.4, <3") == ("torch", ">=2.4,<3")
    assert _split("trl>=1.17,<2") != _split("trl>=1.16,<2")


def test_readme_commands_are_what_ci_runs():
    """README's set-up commands are the ones CI exercises: .ci/run, ending in the suite's command."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert "bash .ci/run" in blocks[1], "the second README command must run the tests through .ci/run"
    assert "jupyter lab course/00_start_here.ipynb" in blocks[0]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "python -m pytest" and "`python -m pytest`" in readme
    assert "torch==2.13.0" in (ROOT / ".ci" / "run").read_text()  # the CPU build, installed first


def test_every_subpackage_is_packaged():
    """A wheel holds only the packages pyproject.toml lists: a new subpackage must be listed too."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "rlhf_kit").rglob("__init__.py")}
    assert found == listed, f"pyproject.toml's [tool.setuptools] packages must be {sorted(found)}"
