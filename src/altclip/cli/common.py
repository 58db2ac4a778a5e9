"""What the commands share: exit codes and the one table from errors to them, the common options, output, loading
the model, and the options that still take the deprecated ``--labels a b c`` form. Command modules import this; it
imports none of them.

Exit codes: 0 success, 1 unexpected error, 2 bad usage (a missing folder or file argument, an empty query, a bad
option value such as an unknown --device or --dtype), 3 the model could not be loaded (or gave NaN), 4 an image or
text could not be used, 5 the index is missing, damaged, unwritable or built with another model.

Output goes through two rich consoles that never read rich markup in what they print: file names, labels, error
messages and install hints (``pip install 'altclip[serve]'``) appear as they are. Styles are given as ``style=``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    # The click typer runs on: its own copy (typer._click) since typer dropped its dependency on click.
    from typer._click import Context
from typer.exceptions import TyperException

from altclip.loading.registry import DEFAULT_MODEL
from altclip.utils.files import stat_failure

EXIT_ERROR, EXIT_USAGE, EXIT_MODEL, EXIT_INPUT, EXIT_INDEX = 1, 2, 3, 4, 5

out = Console(markup=False)
err = Console(
    stderr=True, markup=False, soft_wrap=True
)  # messages are lines: the terminal wraps them, paths stay whole

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", envvar="ALTCLIP_MODEL", help=f"Hub id or checkpoint folder [default: {DEFAULT_MODEL}]"
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... [default: cuda if available]")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 (exact), bfloat16 or float16 [default: float32]")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images or texts per model call")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout")]
IndexOpt = Annotated[
    Path | None, typer.Option("--index", help="Index folder [default: $ALTCLIP_INDEX or the user data dir]")
]
TEMPLATES_HELP = (
    "Prompts: auto (the built-in set of each label's language), none (the label alone), a language code (en, zh, "
    "...), a template with {} where the label goes (or CLIP_benchmark's {c}; repeat the option for more), or a "
    "file of such templates, one per line"
)
TemplatesOpt = Annotated[
    list[str] | None, typer.Option("--templates", metavar="TEMPLATES", help=f"{TEMPLATES_HELP} [default: auto]")
]


def fail(message: str, code: int) -> NoReturn:
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)


def note(message: str) -> None:
    """A line on stderr worth the reader's attention (in yellow)."""
    err.print(message, style="yellow", highlight=False)


def model_errors() -> tuple[type[Exception], ...]:
    """What loading or running a model raises when the checkpoint is missing, damaged or does not fit."""
    from altclip.inference import NonFiniteError
    from altclip.loading.checkpoint import CheckpointError
    from altclip.loading.hub import CheckpointNotFoundError
    from altclip.modeling.config import ConfigError

    return CheckpointError, CheckpointNotFoundError, ConfigError, NonFiniteError


def explain(error: Exception) -> tuple[str, int]:
    """The message and exit code of an error no command handled: the one table from exceptions to exit codes, in
    order (the first match wins, so specific types come before the ValueError they derive from)."""
    import sqlite3

    from altclip.index.embed_files import EmbedError
    from altclip.index.store import IndexMismatchError
    from altclip.processing.image_processing import ImageError
    from altclip.utils.devices import DeviceError

    table: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int, Callable[[Exception], str]]] = [
        (DeviceError, EXIT_USAGE, str),
        (model_errors(), EXIT_MODEL, str),
        ((ImageError, EmbedError), EXIT_INPUT, str),
        (IndexMismatchError, EXIT_INDEX, str),
        (sqlite3.DatabaseError, EXIT_INDEX, lambda e: f"The index database failed: {e} (what was written before it "
                                                      "is kept, and a re-run continues from there)"),
        (MemoryError, EXIT_ERROR, lambda e: "Out of memory"),
        (OSError, EXIT_ERROR, str),
    ]  # fmt: skip
    for types, code, message in table:
        if isinstance(error, types):
            return message(error), code
    text = str(error) if len(str(error)) <= 500 else str(error)[:497] + "..."
    return (
        f"Unexpected {type(error).__name__}: {text}. This is a bug in altclip; please report it "
        "(ALTCLIP_DEBUG=1 shows where it happened)",
        EXIT_ERROR,
    )


class TranslatedErrors(TyperGroup):
    """The ``altclip`` group: any error a command did not handle becomes a message and its exit code (``explain``),
    never a traceback (unless ALTCLIP_DEBUG is set)."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except KeyboardInterrupt:  # Typer would exit 130 without a word (a command that says more handles it itself)
            if os.environ.get("ALTCLIP_DEBUG"):
                raise
            err.print("Interrupted", highlight=False)
            raise typer.Exit(130) from None
        except Exception as e:
            if os.environ.get("ALTCLIP_DEBUG"):
                raise
            fail(*explain(e))


def missing_path(path: Path) -> str | None:
    """Why a path named on the command line cannot be used ("does not exist", "cannot be used (symbolic link
    loop)", ...), or None when it exists."""
    try:
        os.stat(path)
    except OSError as e:
        reason = stat_failure(path, e)
        return "does not exist" if reason == "no such file" else f"cannot be used ({reason})"
    return None


def require_paths(paths: list[Path]) -> None:
    """Exits with EXIT_USAGE naming the first of ``paths`` that does not exist."""
    for path in paths:
        reason = missing_path(path)
        if reason is not None:
            fail(f"{path} {reason}", EXIT_USAGE)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The images named: files as they are (a missing one is the reader's error to report), folders replaced by the
    image files under them, searched recursively, in sorted order. Exits with EXIT_INPUT for a folder without
    images."""
    from altclip.utils.files import IMAGE_SUFFIXES, is_image_name

    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if is_image_name(p.name) and p.is_file())
        if not found:
            fail(f"No image files under {path} (looked for {', '.join(IMAGE_SUFFIXES)})", EXIT_INPUT)
        files += found
    return files


_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` with what would act on the terminal instead of showing escaped as Python writes it: control
    characters (an ESC sequence, a newline that would split a row in two), line separators and the marks that
    reorder text (bidirectional overrides). For tables and lists of file names; --json keeps names exact."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI else ch for ch in text)


def _escape(ch: str) -> str:
    return repr(ch)[1:-1] if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def print_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None, right: Collection[str] = ()
) -> None:
    """Rows on stdout: a table when it fits the console (80 columns when piped, or $COLUMNS), else one block per
    row, its first cell and then a "column  value" line per other cell, so nothing is cut or squeezed. A row whose
    first cell is empty continues the row above. The title is a line of its own. Cells are text, never markup."""
    if title:
        out.print(Text(printable(title)), soft_wrap=True)
    table = Table()
    for column in columns:
        table.add_column(Text(printable(column)), justify="right" if column in right else "left")
    grouped = any(not row[0] for row in rows)  # rows continue others: a line under each group
    for i, row in enumerate(rows):
        last_of_group = grouped and (i + 1 == len(rows) or bool(rows[i + 1][0]))
        table.add_row(*(Text(printable(cell)) for cell in row), end_section=last_of_group)
    if out.measure(table, options=out.options.update_width(1_000_000)).maximum <= out.width:
        out.print(table)
        return
    for i, row in enumerate(rows):
        if row[0]:
            if i:
                out.print()
            out.print(Text(printable(row[0])))
        fields = Table.grid(padding=(0, 2))  # "column  value" lines, long values wrapped under themselves
        fields.add_column(no_wrap=True)
        fields.add_column()
        for column, cell in zip(columns[1:], row[1:]):
            if cell:
                fields.add_row(Text(printable(column)), Text(printable(cell)))
        out.print(Padding(fields, (0, 0, 0, 2), expand=False))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def load_embedder(model: str | None, device: str | None, dtype: str | None, batch_size: int = 32):
    """The model, its processor and an Embedder, or a clear exit: EXIT_USAGE for a --device or --dtype that cannot
    be, EXIT_MODEL when the model cannot be had."""
    from altclip import CheckpointNotFoundError
    from altclip.inference import Embedder
    from altclip.loading.hub import is_hub_id
    from altclip.loading.pretrained import parse_dtype
    from altclip.pipelines import load
    from altclip.utils.devices import DeviceError, resolve_device

    try:
        device, parsed_dtype = resolve_device(device), parse_dtype(dtype)
    except (DeviceError, ValueError) as e:
        fail(f"{e}", EXIT_USAGE)
    name = model or DEFAULT_MODEL
    if Path(name).exists():
        name = str(Path(name).resolve())
    elif not is_hub_id(name):
        fail(
            f"No checkpoint at {name}: no such folder, and not a Hub id (like BAAI/AltCLIP)\n{_try_offline()}",
            EXIT_MODEL,
        )
    else:
        err.print(f"Loading {name} (downloaded into the Hugging Face cache on first use)...", highlight=False)
    try:
        loaded, processor = load(name, device=device, dtype=parsed_dtype)
    except CheckpointNotFoundError as e:
        fail(f"{e}\n{_try_offline()}", EXIT_MODEL)
    except model_errors() + (ValueError, OSError) as e:
        fail(f"Could not load {name}: {e}", EXIT_MODEL)
    return Embedder(loaded, processor, name, batch_size=batch_size)


def _try_offline() -> str:
    """How to go on without a download: point at the random checkpoint written here, or write one first."""
    altclip = command_name()
    if Path("checkpoints/tiny").is_dir():
        return (
            "To try things out without downloads, point at the random checkpoint in ./checkpoints/tiny:\n"
            f"  ALTCLIP_MODEL=./checkpoints/tiny {altclip} ..."
        )
    return (
        "To try things out without downloads, write a small random checkpoint and point at it:\n"
        f"  {altclip} random-checkpoint ./checkpoints/tiny\n"
        f"  ALTCLIP_MODEL=./checkpoints/tiny {altclip} ..."
    )


def command_name() -> str:
    """How to run ``altclip`` again from here: ``altclip`` where PATH finds this one, else the path it was started by
    (``.venv/bin/altclip`` before the environment is activated), or ``python -m altclip``."""
    started = sys.argv[0]
    if os.path.basename(started) == "__main__.py":
        return "python -m altclip"
    if os.path.basename(started) != "altclip":  # run from Python (tests, another program)
        return "altclip"
    found = shutil.which("altclip")
    if found and os.path.realpath(found) == os.path.realpath(started):
        return "altclip"
    relative = os.path.relpath(started)
    return started if relative.startswith("..") else relative if os.sep in relative else f".{os.sep}{relative}"


def read_templates(values: list[str] | None, default: str | list[str] = "auto") -> str | list[str]:
    """The ``--templates`` values as ``altclip.zeroshot`` takes them: one name (auto, none, a language code), or
    the templates given and those of the files given. Exits with EXIT_USAGE naming the option for anything else."""
    from altclip.zeroshot import TEMPLATE_MODES, check_template

    if not values:
        return default
    names = [value for value in values if value in TEMPLATE_MODES]
    if names:
        if len(values) > 1:
            fail(f"--templates {names[0]} stands alone; repeat --templates only for templates and files", EXIT_USAGE)
        return names[0]
    templates: list[tuple[str, str]] = []  # (where it came from, template)
    for value in values:
        if "{" in value or "}" in value:
            templates.append((f"--templates {value!r}", value))
        elif Path(value).is_file():
            templates += [(f"--templates {value}, line {n}", t) for n, t in _template_lines(Path(value))]
        elif Path(value).exists() or os.sep in value or value.endswith(".txt"):
            fail(f"--templates {value}: {missing_path(Path(value)) or 'not a file'}", EXIT_USAGE)
        else:
            fail(
                f"--templates {value!r} is not a prompt set ({', '.join(TEMPLATE_MODES)}), a template with {{}} where "
                "the label goes, or a file of templates",
                EXIT_USAGE,
            )
    if not templates:
        fail(f"--templates {' '.join(values)}: no templates in it", EXIT_USAGE)
    for where, template in templates:
        try:
            check_template(template)
        except ValueError as e:
            fail(f"{where}: {e}", EXIT_USAGE)
    return [template for _, template in templates]


def _template_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"--templates {path} could not be read as UTF-8 text: {e}", EXIT_USAGE)
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def several_values(*options: str) -> type[TyperCommand]:
    """A command class for which ``OPTION a b c`` still means ``OPTION a OPTION b OPTION c`` for the named options,
    with a deprecation warning. Each option takes one value; the form with several values after one option is
    kept for old command lines, and reads every word up to the next option as a value."""

    class Command(TyperCommand):
        def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
            return super().parse_args(ctx, _repeat_options(args, set(options)))

    return Command


def _repeat_options(args: list[str], options: set[str]) -> list[str]:
    result: list[str] = []
    current, extra = None, []
    for arg in args:
        if arg == "--":
            current = None
            result.append(arg)
        elif arg in options:
            current = arg
            result.append(arg)
            taken = 0
        elif current is not None and not (arg.startswith("-") and len(arg) > 1 and not arg[1:2].isdigit()):
            if taken:
                result.append(current)
                extra.append((current, arg))
            result.append(arg)
            taken += 1
        else:
            current = None
            result.append(arg)
    if extra:
        names = sorted({name for name, _ in extra})
        warn(
            f"several values after one {'/'.join(names)} are deprecated; repeat the option for "
            f"each value instead (for example --labels cat --labels dog, or -l cat -l dog)"
        )
    return result
