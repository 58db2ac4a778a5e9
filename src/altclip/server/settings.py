"""The service's settings: one typed object, read (highest first) from command-line flags, ``ALTCLIP_<NAME>``
environment variables, a JSON or TOML file (``--config``), and the defaults here. Each field's description is its
help: ``altclip serve`` makes one flag of each from it."""

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

    model: str = Field(DEFAULT_MODEL, description="Hub id or checkpoint folder")
    index: str | None = Field(None, description="An index folder to search (see `altclip index`); without one, "
                              "search answers 404")  # fmt: skip
    host: str = Field("127.0.0.1", description="Address to bind (127.0.0.1: this machine only)")
    port: int = Field(8000, ge=0, le=65535, description="Port")
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="The server's address as clients reach it (http://host:port, behind a proxy its public URL), for "
        "the URLs in answers; without it, the address it listens on, or relative URLs when that is every interface",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1, ... (a GPU where there is one)")
    dtype: str | None = Field(None, description="float32 (exact), bfloat16 or float16")
    max_batch_size: int = Field(32, ge=1, description="Items per model call")
    max_batch_tokens: int = Field(16384, ge=1, description="Tokens per model call: texts' tokens (padded to the "
                                  "longest), images' patches plus one")  # fmt: skip
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill up after its first item")
    # Requests the API serves at once (reading, decoding, waiting for or in the model), whatever their size; counted
    # before a body is read, so bodies take up to max_queue x max_body_bytes.
    max_queue: int = Field(64, ge=1, description="API requests served at once; more get 429")
    max_queue_tokens: int = Field(1_200_000, ge=1, description="Tokens of model work admitted at once, all "
                                  "requests together; more get 429")  # fmt: skip
    request_timeout_s: float = Field(30.0, gt=0, description="Seconds per request, from its first byte to its "
                                     "answer; then 504")  # fmt: skip
    max_body_bytes: int = Field(20 * 2**20, ge=1, description="Largest request body; then 413")
    max_items: int = Field(2048, ge=1, description="Texts, images, labels or templates per request; then 422")
    max_text_chars: int = Field(4000, ge=1, description="Characters per text, query, label and template")
    max_request_chars: int = Field(256_000, ge=1, description="Characters the model reads for one request, prompts "
                                   "included")  # fmt: skip
    max_request_tokens: int = Field(300_000, ge=1, description="Tokens the model reads for one request: texts' "
                                    "tokens, images' patches plus one")  # fmt: skip
    max_prompts: int = Field(2048, ge=1, description="Labels x templates per classification")
    max_pairs: int = Field(65_536, ge=1, description="Texts x images per similarity request (the answer holds three "
                           "numbers for each pair)")  # fmt: skip
    max_pixels: int = Field(40_000_000, ge=1, description="Pixels per image, checked before decoding")
    max_request_pixels: int = Field(100_000_000, ge=1, description="Pixels to decode per request (after reduced "
                                    "decoding), checked before any is decoded")  # fmt: skip
    max_aspect_ratio: float = Field(50.0, ge=1, description="Longest side over shortest side of an image")
    decode_workers: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, description="Images decoded at once"
    )
    draft: bool = Field(True, description="Decode images at least 4x the model's input at a reduced scale")
    header_timeout_s: float = Field(10.0, gt=0, description="Seconds a connection has to send a request's headers")
    token: str | None = Field(None, repr=False, description="Bearer token for /v1/*, clip-retrieval's routes and "
                              "/metrics (never a flag)")  # fmt: skip
    token_file: Path | None = Field(None, description="Require 'Authorization: Bearer TOKEN' on /v1/*, clip-retrieval's "
                                    "routes and /metrics, TOKEN this file's first line (or $ALTCLIP_TOKEN; never a "
                                    "flag, which every user of the machine sees in ps)")  # fmt: skip
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Origins allowed to call the API from a browser (CORS); from the environment comma-separated"
    )
    thumbnail_size: int = Field(256, ge=16, description="Largest side of a thumbnail, in pixels")
    drain_seconds: float = Field(0.0, ge=0, description="After SIGTERM, serve this long with /readyz false")
    access_log: bool = Field(False, description="Log every request")

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
    def _consistent(self) -> ServerSettings:
        if self.token_file is not None:
            if self.token is not None:
                raise ValueError("give the token or a token file, not both")
            self.token = self._usable_token(read_token(self.token_file))
        if self.max_request_tokens > self.max_queue_tokens:
            raise ValueError("max_request_tokens is over max_queue_tokens: such a request could never be admitted")
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
        return init_settings, Environment(settings_cls, os.environ)

    @classmethod
    def load(
        cls, config_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None, **flags: Any
    ) -> ServerSettings:
        """Flags given (not None), then ``ALTCLIP_*`` variables of ``env`` (default ``os.environ``), then the file.

        The sources of one call are pydantic-settings' own, chosen by ``settings_customise_sources`` of a subclass
        made for the call (its documented way to choose sources)."""
        environ = os.environ if env is None else env
        path = Path(config_file) if config_file else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{path}: no such settings file")

        class Loaded(cls):  # type: ignore[valid-type, misc]  # a subclass of the class called on, made per call
            @classmethod
            def settings_customise_sources(cls, settings_cls, init_settings, *_, **__):
                sources = [init_settings, Environment(settings_cls, environ)]
                if path is not None:
                    sources.append(config_file_source(settings_cls, path))
                return tuple(sources)

        loaded = Loaded(**{k: v for k, v in flags.items() if v is not None})
        return cls.model_construct(loaded.model_fields_set, **dict(loaded))

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


class Environment(InitSettingsSource):
    """The ``ALTCLIP_<NAME>`` variables (any case) of ``environ`` as text, which validation turns into the settings'
    types ("8000" -> 8000, "false" -> False, "a,b" -> ["a", "b"])."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        prefix = settings_cls.model_config["env_prefix"].lower()
        lowered = {k.lower(): v for k, v in environ.items()}
        values = {name: lowered[prefix + name] for name in settings_cls.model_fields if prefix + name in lowered}
        super().__init__(settings_cls, values)


def config_file_source(cls: type[BaseSettings], path: Path) -> InitSettingsSource:
    """A JSON or TOML file of settings; an error naming any key that is not a setting."""
    source = (
        TomlConfigSettingsSource(cls, toml_file=path)
        if path.suffix == ".toml"
        else JsonConfigSettingsSource(cls, json_file=path)
    )
    unknown = set(source.init_kwargs) - set(cls.model_fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return source
