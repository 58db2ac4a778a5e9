"""What the command line prints for people: help that wraps cleanly at 80 columns and names every default, and
tables that stay readable when piped (80 columns), with what users type shown as typed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from altclip.cli import build

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"


def commands() -> list:
    """Every command of ``altclip`` with the words that call it."""
    found = []

    def walk(command, words: list[str]) -> None:
        if hasattr(command, "commands"):  # a group (typer's own copy of click's classes)
            for name, sub in command.commands.items():
                walk(sub, [*words, name])
        else:
            found.append((words, command))

    walk(typer.main.get_command(build()), [])
    return found


COMMANDS = commands()


def invoke(*args: str, env: dict[str, str] | None = None):
    env = {"COLUMNS": "80", **(env or {})}
    return CliRunner().invoke(build(), list(args), env=env, catch_exceptions=False, prog_name="altclip")


def options(command) -> list:
    """The options of a command that take a value and may be left out (and that --help shows)."""
    return [p for p in command.params if p.param_type_name == "option" and not p.is_flag and not p.required
            and p.name != "help" and not p.hidden]  # fmt: skip


def help_text(command, param) -> str:
    """An option's help as ``--help`` shows it, unwrapped."""
    return param.get_help_record(command.context_class(command, info_name=command.name))[1]


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=[" ".join(w) for w, _ in COMMANDS])
def test_help_wraps_at_80_columns_and_names_every_default(words):
    command = dict((tuple(w), c) for w, c in COMMANDS)[tuple(words)]
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(" ".join(["Usage: altclip", *words]))
    assert max(len(line) for line in lines) <= 80
    assert "<bool>" not in result.stdout and "…" not in result.stdout
    options_part = result.stdout.partition("\nOptions:")[2]
    assert "<list[" not in options_part  # repeated options name their value (-l LABEL); arguments show typer's types
    shown = " ".join(result.stdout.split())
    for param in options(command):
        default = re.search(r"\[default: [^\]]*\]", help_text(command, param))
        assert default, f"{' '.join(words)} {param.opts}: no default"
        assert " ".join(default.group(0).split()) in shown, f"{param.opts}: {default.group(0)} not shown"


def test_python_m_altclip_is_altclip():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "altclip", "--help"], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("Usage: altclip [OPTIONS] COMMAND")


def test_serve_help_names_the_settings_defaults():
    """The service's defaults live in ServerSettings; its flags' help says the same numbers."""
    from altclip.server import ServerSettings

    serve = dict((tuple(w), c) for w, c in COMMANDS)[("serve",)]
    defaults = ServerSettings.model_fields
    checked = 0
    for param in options(serve):
        if (
            param.name in defaults
            and param.name != "model"
            and isinstance(defaults[param.name].default, (int, float, str))
        ):
            shown = re.search(r"\[default: ([^,\]]+)", help_text(serve, param)).group(1)
            expected = defaults[param.name].default
            assert shown == (f"{expected:g}" if isinstance(expected, float) else str(expected)), param.name
            checked += 1
    assert checked >= 9


def test_a_table_too_wide_for_the_console_becomes_blocks(checkpoint):
    """`models` at 80 columns: each model a block of "field  value" lines, nothing cut, no line over 80."""
    from altclip.loading.registry import KNOWN_MODELS, KNOWN_TEACHERS

    result = invoke("models")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout
    for name in [*KNOWN_MODELS, *KNOWN_TEACHERS]:
        assert any(line.startswith(name) for line in lines), name
    words = " ".join(line.strip() for line in lines)
    assert "Bilingual (English, Chinese) AltCLIP: XLM-R large text tower, CLIP ViT-L/14 image tower" in words
    wide = invoke("models", env={"COLUMNS": "200"})
    assert "┃ name" in wide.stdout  # a table where it fits


def test_tables_show_what_users_typed(checkpoint):
    """Labels are text, not rich markup; a title is a line of its own, not folded into a narrow table."""
    result = invoke("classify", str(PHOTOS / "cat.jpg"), "-l", "[bold]猫[/bold]", "-l", "[dog]", "--templates", "none",
                    env={"ALTCLIP_MODEL": str(checkpoint)})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[bold]猫[/bold]" in result.stdout and "[dog]" in result.stdout
    query = "a long query about a cat sleeping on a warm windowsill in the afternoon sun"
    similarity = invoke(
        "similarity", "-i", str(PHOTOS / "cat.jpg"), "-t", query, env={"ALTCLIP_MODEL": str(checkpoint)}
    )
    assert similarity.stdout.splitlines()[0] == "P(text | image)"
    assert query in " ".join(similarity.stdout.split())  # the header, whole (wrapped in the table, or in a block)
