"""environment.yml (conda) and pyproject.toml (pip) must ask for the same packages.

Conda cannot be reached from CI, so this test is what keeps the conda route honest.
"""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pip_section(text):
    """The items under `- pip:` in environment.yml (a tiny reader: no YAML dependency)."""
    items, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped == "- pip:":
            inside = True
            continue
        if inside:
            if not re.match(r"^\s{6,}- ", line):
                break
            items.append(stripped[2:].strip())
    return items


def _norm(req):
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = (ROOT / "environment.yml").read_text()
    pip_items = _pip_section(env)
    assert "-e ." in pip_items, "environment.yml must install this package (`-e .`)"
    from_env = sorted(_norm(r) for r in pip_items if r != "-e .")
    # The dependencies and the `test` extra: a conda user runs the same tests as CI.
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    assert from_env == sorted(_norm(r.split("#")[0]) for r in wanted)
    assert re.search(r"^\s+- python=3\.1\d\s*$", env, re.M)
    assert "conda-forge" in env


def test_torch_is_pinned_to_the_tested_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in deps, "a loose torch pin pulls a multi-GB CUDA build on CI"
