"""``altclip serve``: the HTTP service and its search page.

Its options are the service's settings (``altclip.server.ServerSettings``), one flag per setting, made from the
settings' own fields: their names, types, descriptions and defaults are written once, there. A flag left out leaves
the setting to ``ALTCLIP_*`` environment variables, then ``--config``, then its default.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from altclip.cli.common import EXIT_INDEX, EXIT_USAGE, err, fail, load_embedder, warn

MISSING: ImportError | None = None
try:
    from altclip.server.settings import ServerSettings
except ImportError as e:  # the service's extra is not installed: `serve` says what to install
    MISSING = e

app = typer.Typer()

FLAGS = {  # settings whose flags are not --<name>
    "model": ("--model", "-m"),
    "request_timeout_s": ("--timeout",),
    "cors_origins": ("--cors-origin",),
}
DEFAULTS = {  # defaults that depend on more than the setting
    "model": "the index's model, else BAAI/AltCLIP",
    "decode_workers": "the CPUs, at most 4",
    "device": "cuda if available",
    "dtype": "float32",
}
METAVARS = {"cors_origins": "ORIGIN"}
NOT_FLAGS = {"token"}  # a token given as a flag is visible to every user of the machine (ps): refused below


def _shown(value: Any) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_type(annotation: Any) -> Any:
    """The type a flag reads for a setting of ``annotation`` (``int | None`` -> ``int``)."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def setting_options() -> list[inspect.Parameter]:
    """One keyword parameter per setting, as typer reads them: its flag, type and help with its default."""
    params = []
    for name, field in ServerSettings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        kind = _flag_type(field.annotation)
        default = DEFAULTS.get(name) or _shown(field.get_default(call_default_factory=False))
        flags = FLAGS.get(name, (f"--{name.replace('_', '-')}",))
        if kind is bool:
            flags = (f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}",)
        option = typer.Option(*flags, help=f"{field.description} [default: {default}]", metavar=METAVARS.get(name),
                              show_default=False)  # fmt: skip
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, option]))  # fmt: skip
    return params


def serve(
    config: Path | None = None, token: str | None = None, **flags: Any
) -> None:  # the signature typer reads is set below
    """Serve embeddings, zero-shot classification, similarity and index search over HTTP, with a search page at /.
    Settings come from flags, ALTCLIP_* environment variables, or --config, in that order."""
    from altclip.index import IndexFileError, open_index

    try:
        if MISSING is not None:
            raise MISSING
        from altclip.server import serve as run
        from altclip.server.run import bind
    except ImportError as e:
        fail(f"{e}. The service needs: pip install 'altclip[serve]'", EXIT_USAGE)

    if token is not None:
        fail(
            "--token is not taken: a token on the command line is visible to every user of this machine (ps). "
            "Put it in a file readable by you alone and pass --token-file FILE, or set ALTCLIP_TOKEN.",
            EXIT_USAGE,
        )
    flags = {k: (str(v) if k == "index" and v is not None else v) for k, v in flags.items()}
    flags["cors_origins"] = flags.get("cors_origins") or None
    try:
        settings = ServerSettings.load(config, **flags)
    except (OSError, ValueError, TypeError) as e:
        fail(f"Bad settings: {e}", EXIT_USAGE)
    try:
        sock = bind(settings.host, settings.port)  # before the model loads: a port in use is said at once
    except OSError as e:
        fail(f"Cannot listen on {settings.host}:{settings.port}: {e.strerror or e}", EXIT_USAGE)
    if settings.index:
        try:
            with open_index(settings.index) as idx:
                stored = idx.model
        except (FileNotFoundError, IndexFileError) as e:
            sock.close()
            fail(str(e), EXIT_INDEX)
        except ImportError as e:
            sock.close()
            fail(f"{e}. Serving this index needs: pip install 'altclip[index]'", EXIT_USAGE)
        if flags.get("model") is None and stored and "ALTCLIP_MODEL" not in os.environ:
            settings.model = stored
    embedder = load_embedder(settings.model, settings.device, settings.dtype, settings.max_batch_size)
    settings.model = embedder.name
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.token is None:
        warn(f"serving on {settings.host} without a token (--token-file): anyone who can reach it can use it")
    err.print(f"Settings: {settings.public()}", highlight=False)
    host, port = sock.getsockname()[:2]
    err.print(f"Listening on http://{f'[{host}]' if ':' in host else host}:{port} (the search page; the API at "
              "/docs)", highlight=False)  # fmt: skip
    run(settings, embedder, sock)


COMMON = [
    inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None,
            typer.Option(help="A JSON or TOML file of settings [default: none]", envvar="ALTCLIP_CONFIG"),
        ],
    ),
    inspect.Parameter(
        "token",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option(hidden=True)],
    ),
]
# typer reads the options off the signature: the common ones, then one per setting.
signature = inspect.Signature(COMMON + (setting_options() if MISSING is None else []))
serve.__signature__ = signature  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
app.command()(serve)
