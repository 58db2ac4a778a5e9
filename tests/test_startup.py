"""Start-up: ``altclip --help``, ``--version`` and a mistyped command answer without importing PyTorch, and the
library costs little beyond PyTorch itself.

Times are compared with ``python -c "import torch"`` measured in the same run, in fresh processes taken in turn (the
fastest of a few of each), so a slow or busy machine slows both sides alike: the targets are 0.5 s for the command
line and ``import torch`` + 0.3 s for the library where PyTorch takes about 1.4 s to import."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).parent.parent / "src")
CLI = ["--help", "-h", "--version", "clasify"]  # the last one mistyped
LIBRARY = "from altclip import *"  # every public name, so every module behind them
# What the command line may import before a command runs; PyTorch and what comes with it take seconds.
HEAVY = ("torch", "numpy", "PIL", "tokenizers", "safetensors", "huggingface_hub")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env(), capture_output=True, timeout=300)
    return time.perf_counter() - start


@pytest.mark.parametrize("argument", CLI)
def test_the_command_line_answers_without_pytorch(argument):
    script = (
        "import sys\nfrom altclip.cli import main\nsys.argv = ['altclip', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        f"print('CODE', code, 'LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), "
        "file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", script, argument], env=env(), capture_output=True, text=True)
    code = 2 if argument == "clasify" else 0
    assert f"CODE {code} LOADED []" in result.stderr, result.stderr
    if argument == "clasify":
        assert "No such command 'clasify'" in result.stderr and "classify" in result.stderr  # a suggestion
    elif argument == "--version":
        assert result.stdout.strip() == "altclip 0.1.0"
    else:
        assert "Commands:" in result.stdout and "--version" in result.stdout


def test_varlen_attention_is_not_imported_by_the_library():
    """torch.nn.attention.varlen loads torch._dynamo (a second or more); only CUDA half precision needs it."""
    script = f"import sys\n{LIBRARY}\nprint(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch.nn.attention.varlen'))))"
    result = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_start_up_times_against_import_torch():
    runs: dict[str, list[float]] = {"torch": [], "library": [], **{a: [] for a in CLI}}
    for _ in range(3):  # in turn, so that load on the machine falls on each alike
        runs["torch"].append(seconds(["-c", "import torch"]))
        runs["library"].append(seconds(["-c", LIBRARY]))
        for argument in CLI:
            runs[argument].append(seconds(["-m", "altclip", argument]))
    best = {name: min(times) for name, times in runs.items()}
    print({name: round(value, 3) for name, value in best.items()})
    for argument in CLI:
        assert best[argument] <= 0.5 * best["torch"], (argument, best)  # 0.5 s of 1.4 s is 0.36
    assert best["library"] <= 1.25 * best["torch"], best  # 1.4 s + 0.3 s is 1.21 x


def test_the_lazy_public_api_is_the_one_type_checkers_see():
    """``altclip/__init__.py`` names each public name three times (the lazy table, ``__all__``, the imports under
    TYPE_CHECKING): they must agree, and each name must be what its module defines."""
    import ast
    import importlib

    import altclip

    tree = ast.parse(Path(altclip.__file__).read_text(encoding="utf-8"))
    checked = next(node for node in tree.body if isinstance(node, ast.If))
    imported = {alias.name: node.module for node in checked.body for alias in node.names}
    assert imported == altclip._EXPORTS and sorted(altclip.__all__) == sorted(imported)
    for name, module in imported.items():
        assert getattr(altclip, name) is getattr(importlib.import_module(module), name)
    assert set(altclip.__all__) <= set(dir(altclip))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        altclip.nothing  # noqa: B018
