"""The service's settings: one typed object, read (highest first) from command-line flags, ``ALTCLIP_<NAME>``
environment variables, a JSON or TOML file (``--config``), and the defaults here."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from altclip.loading.registry import DEFAULT_MODEL


class ServerSettings(BaseSettings):
    """``ServerSettings(**values)`` reads the environment too; ``ServerSettings.load(config, **flags)`` adds a file."""

    model_config = SettingsConfigDict(env_prefix="ALTCLIP_", extra="forbid")

    model: str = DEFAULT_MODEL
    index: str | None = None  # an index folder to search; without one, /v1/search answers 404
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str | None = None  # default: a GPU where there is one (altclip.utils.devices)
    dtype: str | None = None
    max_batch_size: int = Field(32, ge=1)  # items per model call
    max_wait_ms: float = Field(5.0, ge=0)  # how long a batch waits for more items after its first
    # Requests the API serves at once (reading, decoding, waiting for or in the model), whatever their size; beyond
    # that 429 at once. Each is bounded by the limits below, so this also bounds memory: bodies alone take up to
    # max_queue x max_body_bytes.
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)  # per request, from its first byte to its answer; then 504
    max_body_bytes: int = Field(20 * 2**20, ge=1)  # then 413
    max_items: int = Field(64, ge=1)  # texts, images, labels or templates per request; then 422
    max_text_chars: int = Field(4000, ge=1)  # per text, query, label and template; then 422
    max_request_chars: int = Field(256_000, ge=1)  # all the text the model reads for one request (prompts included)
    max_prompts: int = Field(2048, ge=1)  # labels x templates per classification; then 422
    max_pixels: int = Field(40_000_000, ge=1)  # per image, checked before decoding
    max_request_pixels: int = Field(100_000_000, ge=1)  # pixels to decode per request (after draft), checked first
    max_aspect_ratio: float = Field(50.0, ge=1)
    decode_workers: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1)  # images decoded at once
    # Images at least 4x the model's input on their short side are decoded at a reduced scale (JPEG: DCT scaling in
    # the decoder) or box-reduced, to no less than twice the input, before the resize: far less time and memory,
    # pixels within a few levels of the exact path. False: every image takes the exact path.
    draft: bool = True
    header_timeout_s: float = Field(10.0, gt=0)  # a connection must send a request's headers within this; then closed
    token: str | None = Field(None, repr=False)  # bearer token for /v1/* and /metrics; None leaves them open
    token_file: Path | None = None  # read the token from this file (its first line) instead
    cors_origins: Annotated[list[str], NoDecode] = []  # none: CORS off; from the environment: comma-separated
    thumbnail_size: int = Field(256, ge=16)
    drain_seconds: float = Field(0.0, ge=0)  # after SIGTERM, keep serving with /readyz false this long
    access_log: bool = False  # uvicorn's log line per request

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("token")
    @classmethod
    def _usable_token(cls, value: str | None) -> str | None:
        if value is not None and not (value and value.isascii() and value.isprintable() and value == value.strip()):
            raise ValueError("the token must be printable ASCII, not empty, with no spaces at either end")
        return value

    @model_validator(mode="after")
    def _token_from_file(self) -> ServerSettings:
        if self.token_file is not None:
            if self.token is not None:
                raise ValueError("give the token or a token file, not both")
            self.token = self._usable_token(read_token(self.token_file))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls, os.environ)

    @classmethod
    def load(
        cls, config_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None, **flags: Any
    ) -> ServerSettings:
        """Flags given (not None), then ``ALTCLIP_*`` variables of ``env`` (default ``os.environ``), then the file."""
        sources: list[PydanticBaseSettingsSource] = [
            InitSettingsSource(cls, {k: v for k, v in flags.items() if v is not None}),
            _Environment(cls, os.environ if env is None else env),
        ]
        if config_file:
            sources.append(_config_file(cls, Path(config_file)))
        return cls(_build_sources=(tuple(sources), {}))

    def public(self) -> dict[str, Any]:
        """The settings to log: the token masked."""
        return {**self.model_dump(), "token": "***" if self.token else None}


def read_token(path: Path) -> str:
    """The first line of a token file, which should be readable by its owner alone."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {e}") from None
    if path.stat().st_mode & 0o077:
        warnings.warn(f"{path} can be read by other users (chmod 600 it)", stacklevel=2)
    return text.splitlines()[0].strip() if text.strip() else ""


class _Environment(InitSettingsSource):
    """The ``ALTCLIP_<NAME>`` variables (any case) of ``environ`` as text, which validation turns into the settings'
    types ("8000" -> 8000, "false" -> False, "a,b" -> ["a", "b"])."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        prefix = settings_cls.model_config["env_prefix"].lower()
        lowered = {k.lower(): v for k, v in environ.items()}
        values = {name: lowered[prefix + name] for name in settings_cls.model_fields if prefix + name in lowered}
        super().__init__(settings_cls, values)


def _config_file(cls: type[ServerSettings], path: Path) -> InitSettingsSource:
    """A JSON or TOML file of settings; an error naming any key that is not a setting."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such settings file")
    source = (
        TomlConfigSettingsSource(cls, toml_file=path)
        if path.suffix == ".toml"
        else JsonConfigSettingsSource(cls, json_file=path)
    )
    unknown = set(source.init_kwargs) - set(cls.model_fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return source
