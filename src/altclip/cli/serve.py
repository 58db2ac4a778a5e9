"""``altclip serve``: the HTTP service and its search page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from altclip.cli.common import EXIT_INDEX, EXIT_USAGE, DeviceOpt, DtypeOpt, err, fail, load_embedder, warn

app = typer.Typer()


@app.command()
def serve(
    index: Annotated[
        Path | None,
        typer.Option(
            "--index", help="An index folder to search (see `altclip index`) [default: none; search answers 404]"
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1, this machine only]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000]")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Hub id or checkpoint folder [default: the index's model, else BAAI/AltCLIP]"
        ),
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="A JSON or TOML file of settings [default: none]", envvar="ALTCLIP_CONFIG")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Items per model call [default: 32]")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="How long a batch waits to fill up [default: 5]")] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="API requests served at once; more get 429 [default: 64]")
    ] = None,
    request_timeout_s: Annotated[
        float | None, typer.Option("--timeout", help="Seconds per request before 504 [default: 30]")
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Largest request body before 413 [default: 20971520, 20 MiB]")
    ] = None,
    max_items: Annotated[
        int | None, typer.Option(help="Texts, images or labels per request before 422 [default: 64]")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Require 'Authorization: Bearer TOKEN' on /v1/*, the OpenAI and clip-retrieval routes and /metrics, "
            "TOKEN the file's first line [default: $ALTCLIP_TOKEN_FILE, or the token in $ALTCLIP_TOKEN, else none; "
            "never a flag, which every user of the machine sees in ps]",
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(hidden=True)] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Allow cross-origin requests from this origin (repeat for more) [default: none, CORS off]",
        ),
    ] = None,
    drain_seconds: Annotated[
        float | None, typer.Option(help="After SIGTERM, serve this long with /readyz false [default: 0]")
    ] = None,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log", help="Log every request [default: no-access-log]")
    ] = None,
) -> None:
    """Serve embeddings, zero-shot classification, similarity and index search over HTTP, with a search page at /.
    Settings come from flags, ALTCLIP_* environment variables, or --config, in that order."""
    from altclip.index import IndexFileError, open_index

    try:
        from altclip.server import ServerSettings
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
    try:
        settings = ServerSettings.load(
            config,
            index=str(index) if index else None,
            host=host,
            port=port,
            model=model,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            request_timeout_s=request_timeout_s,
            max_body_bytes=max_body_bytes,
            max_items=max_items,
            token_file=token_file,
            cors_origins=cors_origins or None,
            drain_seconds=drain_seconds,
            access_log=access_log,
        )
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
        if model is None and stored and "ALTCLIP_MODEL" not in os.environ:
            settings.model = stored
    embedder = load_embedder(settings.model, settings.device, settings.dtype, settings.max_batch_size)
    settings.model = embedder.name
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.token is None:
        warn(f"serving on {settings.host} without a token (--token-file): anyone who can reach it can use it")
    err.print(f"Settings: {settings.public()}", highlight=False)
    run(settings, embedder, sock)
