"""The README's shell commands, run as written, in order, in one shell, on the tiny random checkpoint.

Every ```bash block of README.md runs from a copy of the repository's examples (with the Makefile), in a fresh home
folder, with the network off for models (HF_HUB_OFFLINE). What stands in for the set-up and for what cannot run
here, all of it listed here:

- ``.venv`` is this test's environment: ``.venv/bin/altclip`` runs ``python -m altclip`` of this interpreter,
  ``.venv/bin/activate`` puts it on PATH, and ``.venv/.installed`` is up to date, so ``make demo`` runs its recipe.
- ``pip install ...`` lines are checked, not run: the extras they name exist in pyproject.toml and what they
  install imports here (the test environment has every extra).
- Nothing else is changed: the model is the one the README's own lines name (``export ALTCLIP_MODEL=./checkpoints/tiny``,
  the random checkpoint its set-up writes), and a command that names a Hub model would fail offline, as it would for
  a reader without a network.
- ``altclip serve`` runs in the background on a free port (``ALTCLIP_PORT``), and URLs of 127.0.0.1:8000 point to
  it; ``curl`` fails on HTTP errors (``--fail`` in the home folder's .curlrc).
- A block right after ``<!-- readme-test: skip (why) -->`` is not run (a cluster, a GPU, the full-size model).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import free_port

ROOT = Path(__file__).parent.parent
SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->")
# pip install name -> the module it provides, where they differ
MODULES = {"scikit-learn": "sklearn", "clip-retrieval": "clip_retrieval", "clip-benchmark": "clip_benchmark"}


def shell_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, block, reason to skip it or None) for each ```bash block."""
    lines = text.splitlines()
    blocks, skip, i = [], None, 0
    while i < len(lines):
        marker = SKIP.fullmatch(lines[i].strip())
        if marker:
            skip = marker.group(1)
        elif lines[i] == "```bash":
            end = lines.index("```", i + 1)
            blocks.append((i + 2, "\n".join(lines[i + 1 : end]), skip))
            skip, i = None, end
        elif lines[i].strip():
            skip = None  # a marker applies to the block right after it
        i += 1
    return blocks


def commands(line: int, block: str) -> list[tuple[int, str]]:
    """The block's commands with their README line numbers, continuation lines joined."""
    out, pending, start = [], "", line
    for offset, text in enumerate(block.splitlines()):
        if not pending:
            start = line + offset
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        command = (pending + text).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append((start, command))
    return out


def optional_dependencies(pyproject: str) -> list[str]:
    """The extras pyproject.toml defines (read without tomllib, which Python 3.10 lacks)."""
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return re.findall(r"^([\w-]+)\s*=", section, re.MULTILINE)


def check_pip(command: str, extras: list[str]) -> None:
    """A ``pip install`` line of the README: its extras exist, and what it installs imports here."""
    words = shlex.split(command.split("#")[0])[2:]
    for word in words:
        if word.startswith("-"):
            continue
        match = re.fullmatch(r"\.\[([\w,]+)\]", word)
        if match:
            for extra in match.group(1).split(","):
                assert extra in extras, f"{command}: pyproject.toml has no extra {extra!r}"
        else:
            module = MODULES.get(word, word.replace("-", "_"))
            assert importlib.util.find_spec(module), f"{command}: {word} is not installed here"


def rewrite(command: str, port: int) -> str:
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    if command.startswith("altclip serve"):
        command = re.sub(r"\s+#.*$", "", command)  # without its comment, to append to it
        return (
            f"ALTCLIP_PORT={port} {command} > serve.log 2>&1 & SERVER=$!\n"
            f"for _ in $(seq 900); do curl -s http://127.0.0.1:{port}/readyz >/dev/null 2>&1 && break; "
            "kill -0 $SERVER || { cat serve.log; exit 1; }; sleep 0.1; done"
        )
    return command


def sandbox(tmp: Path) -> Path:
    """A copy of what the README's commands read, with .venv standing for this test's environment."""
    work = tmp / "repo"
    shutil.copytree(ROOT / "examples", work / "examples", symlinks=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, work / name)
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "altclip").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m altclip "$@"\n')
    (bin_dir / "altclip").chmod(0o755)
    (bin_dir / "activate").write_text('VIRTUAL_ENV="$PWD/.venv"; export VIRTUAL_ENV; PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    (work / ".venv" / ".installed").touch()  # newer than the Makefile and pyproject.toml: make skips the set-up
    (tmp / "home").mkdir()
    (tmp / "home" / ".curlrc").write_text("--fail\n--silent\n--show-error\n")
    return work


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("make") or not shutil.which("curl"), reason="needs make and curl")
def test_every_readme_command_runs(tmp_path):
    extras = optional_dependencies((ROOT / "pyproject.toml").read_text())
    port = free_port()
    script = ["set -euo pipefail", "SERVER=", "trap '[ -n \"$SERVER\" ] && kill $SERVER 2>/dev/null; true' EXIT"]
    ran, skipped = [], []
    for line, block, skip in shell_blocks((ROOT / "README.md").read_text(encoding="utf-8")):
        if skip:
            skipped.append(f"README.md:{line}: {skip}")
            continue
        for number, command in commands(line, block):
            if command.startswith("pip install"):
                check_pip(command, extras)
                continue
            script += [f"echo {shlex.quote(f'>>> README.md:{number}: {command}')} >&2", rewrite(command, port)]
            ran.append(number)
    work = sandbox(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTCLIP_")}
    env.update(HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", COLUMNS="80",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))  # fmt: skip
    env.pop("XDG_DATA_HOME", None)
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    print(f"{len(ran)} README commands ran; not run:\n  " + "\n  ".join(skipped))
    failed = [line for line in result.stderr.splitlines() if line.startswith(">>> ")][-1:]
    assert result.returncode == 0, f"failed at {failed}\n{result.stderr[-4000:]}"
    assert len(ran) >= 25 and (work / "emb" / "img_emb" / "img_emb_0.npy").exists()
    assert (
        len(list((work / "eval-results").glob("*.json"))) == 2
        and (work / "runs" / "contrastive-tiny" / "final").is_dir()
    )
    # What the commands leave in the repository is ignored by git.
    made = {p.name + "/" * p.is_dir() for p in work.iterdir()} - {".venv/", "examples/", "Makefile", "pyproject.toml"}
    made.discard("serve.log")  # this test's own
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *made], cwd=ROOT, capture_output=True, text=True)
    assert set(ignored.stdout.split()) == made, f"not in .gitignore: {made - set(ignored.stdout.split())}"
