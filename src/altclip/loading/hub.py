"""Finding checkpoint files: in a local folder, or on the Hugging Face Hub through its cache."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Literal, TypedDict, Unpack, overload
from urllib.parse import urlparse

HUB_KEYWORDS = ("revision", "subfolder", "cache_dir", "local_files_only", "token")
"""The keywords of ``resolve_file`` that say where a checkpoint's files are, shared by every ``from_pretrained``."""


class HubOptions(TypedDict, total=False):
    """``HUB_KEYWORDS`` with their types, as a ``from_pretrained`` passes them on to ``resolve_file``."""

    revision: str | None
    subfolder: str
    cache_dir: str | os.PathLike | None
    local_files_only: bool
    token: str | bool | None


class CheckpointNotFoundError(OSError):
    """A checkpoint, or a file it needs, could not be found locally or downloaded."""


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).exists()


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub model id (``org/name``), rather than of a local path."""
    return name.count("/") == 1 and not name.startswith(("/", ".", "~"))


def _download_help(repo_id: str) -> str:
    return (
        f"To use a local copy instead, download it where the Hub is reachable "
        f"(`hf download {repo_id} --local-dir ./{repo_id.split('/')[-1]}`, huggingface_hub's command line), copy "
        f"that folder here and pass its path (for example `from_pretrained('./{repo_id.split('/')[-1]}')` or `ALTCLIP_MODEL=./"
        f"{repo_id.split('/')[-1]}`). A folder needs config.json and model.safetensors or pytorch_model.bin; "
        f"for text it also needs tokenizer.json or sentencepiece.bpe.model."
    )


@overload
def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    required: Literal[True] = True,
    subfolder: str = "",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path: ...


@overload
def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    required: bool,
    subfolder: str = "",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path | None: ...


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    required: bool = True,
    subfolder: str = "",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path | None:
    """The local path of ``filename`` of a checkpoint, downloading it into the Hub cache when needed.

    ``name_or_path`` is a folder, a file (returned as is when it is ``filename`` itself), or a Hub model id.
    Returns None for a file that does not exist when ``required`` is False. ``subfolder``, ``cache_dir``,
    ``local_files_only`` and ``token`` mean what they mean to huggingface_hub (and to transformers).
    """
    path = Path(name_or_path)
    if path.is_file():
        if path.name == filename:
            return path
        path = path.parent
    if path.is_dir():
        path = path / subfolder if subfolder else path
        candidate = path / filename
        if candidate.is_file():
            return candidate
        if required:
            raise CheckpointNotFoundError(f"{path} has no {filename}")
        return None
    hub = dict(subfolder=subfolder or None, cache_dir=cache_dir, token=token)
    return _hub_file(
        str(name_or_path), filename, revision=revision, required=required, local_only=local_files_only, **hub
    )


def _hub_file(
    repo_id: str, filename: str, *, revision: str | None, required: bool, local_only: bool = False, **hub
) -> Path | None:
    if not is_hub_id(repo_id):
        raise CheckpointNotFoundError(
            f"{repo_id!r} is neither an existing local path nor a Hugging Face Hub model id (like 'BAAI/AltCLIP')"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        offline = local_only or not hub_reachable()  # then the cache alone answers, without minutes of retries
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline, **hub))
    except GatedRepoError as e:
        raise CheckpointNotFoundError(f"{repo_id} is gated on the Hugging Face Hub; log in with access: {e}") from None
    except RepositoryNotFoundError:
        raise CheckpointNotFoundError(
            f"No model {repo_id!r} on the Hugging Face Hub (or it is private), and no local folder of that name"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointNotFoundError(f"{repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: test it first
        # Offline (HF_HUB_OFFLINE=1) or the Hub is unreachable, and the file is not in the cache.
        if not required:
            return None
        raise CheckpointNotFoundError(
            f"Could not download {filename} of {repo_id}: the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE is "
            f"set) and the file is not in the local cache. " + _download_help(repo_id)
        ) from None
    except EntryNotFoundError:
        if required:
            raise CheckpointNotFoundError(f"{repo_id} has no file {filename}") from None
        return None
    except OSError as e:  # network errors that huggingface_hub does not wrap
        raise CheckpointNotFoundError(
            f"Could not download {filename} of {repo_id}: {e}. " + _download_help(repo_id)
        ) from None


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host answers a TCP connection (checked once per process). Behind a proxy, or with
    HF_HUB_OFFLINE set, huggingface_hub's own handling is left alone."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_first(
    name_or_path: str | os.PathLike, filenames: list[str], *, what: str = "files", **hub: Unpack[HubOptions]
) -> Path:
    """The first of ``filenames`` the checkpoint has; an error naming them all when it has none. ``hub``: the
    keywords of ``resolve_file`` (revision, subfolder, ...)."""
    for name in filenames:
        found = resolve_file(name_or_path, name, required=False, **hub)
        if found is not None:
            return found
    if is_local(name_or_path):
        raise CheckpointNotFoundError(f"{name_or_path} has no {what}: looked for {', '.join(filenames)}")
    raise CheckpointNotFoundError(
        f"Could not find {what} of {name_or_path} ({', '.join(filenames)}): not on the Hub, or the Hub is "
        f"unreachable and they are not in the local cache. " + _download_help(str(name_or_path))
    )
