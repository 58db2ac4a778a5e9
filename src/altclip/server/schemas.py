"""The service's API types: the field types of one deployment (``Fields``, its limits as pydantic constraints), the
request models of the ``/v1`` API built from them (``Requests``), and the responses.

FastAPI validates every request body against these models and generates ``/openapi.json`` from the same models, so
the limits a body is checked against are the limits the document states. What JSON Schema cannot say beside a field
(characters and prompts in all, tokens, pixels) is checked by the models' validators, as part of the same
validation. ``validation_message`` turns pydantic's errors into the sentences the API answers with.
"""

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from altclip import zeroshot
from altclip.server.errors import BadRequest, InvalidInput
from altclip.utils import jsonsafe

# JSON Schema patterns are ECMA-262 regular expressions, whose whitespace (\s) is this set, not Python's (which also
# counts \x1c-\x1f and \x85). The patterns and the server's own stripping both use it, so they agree on what is blank.
WHITESPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NON_BLANK = rf"[^{WHITESPACE}]"  # a text has a character that is not whitespace
TEMPLATE = r"^[^{}]*(\{\}[^{}]*)+$"  # '{}' for the label, and no other brace
_EDGES = re.compile(rf"^[{WHITESPACE}]+|[{WHITESPACE}]+$")
_BASE64_BREAKS = re.compile(r"[\r\n\t ]+")
IMAGE_BASE64 = {
    "type": "string",
    "format": "base64-image",
    "contentEncoding": "base64",
    "contentMediaType": "image/*",
    "description": "An image file (JPEG, PNG, WebP, ...) in base64, or as a data: URL",
}
IMAGE_FILE = {"type": "string", "format": "binary", "description": "An image file (JPEG, PNG, WebP, ...)"}
TEMPLATE_MODES = zeroshot.TEMPLATE_MODES
TemplateMode: Any = Literal[TEMPLATE_MODES]  # one of the names, as a type (made from the tuple at run time)
TEMPLATES_HELP = (
    "templates must be 'auto', 'none', a language code ({}), a non-empty list of templates with '{{}}', or null"
).format(", ".join(TEMPLATE_MODES[2:]))
# The parts of a multipart form and how they are sent (OpenAPI's encoding object): Schemathesis sends image parts
# as images, and the labels part as text.
UPLOAD_ENCODING = {"image": {"contentType": "image/*"}, "images": {"contentType": "image/*"},
                   "labels": {"contentType": "text/plain"}}  # fmt: skip


def strip(text: str) -> str:
    """``text`` without whitespace (as ``WHITESPACE`` counts it) at either end."""
    return _EDGES.sub("", text)


def refuse(message: str, kind: str = "refused") -> PydanticCustomError:
    """A validation error whose message is ``message`` as it is (braces included)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


@dataclass(frozen=True)
class Says:
    """``Annotated[T, Says(message)]``: every validation error of the field is the one ``message`` (its constraints
    still checked and documented), for fields whose every error means the same to a client."""

    message: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.custom_error_schema(
            handler(source), custom_error_type="refused", custom_error_message=self.message
        )


def decode_base64(text: str, index: int) -> bytes:
    """An image sent as base64 (optionally a ``data:`` URL, whose scheme is case-insensitive), with or without the
    line breaks of MIME base64 (what the ``base64`` command writes)."""
    if text[:5].lower() == "data:":
        text = text.partition(",")[2]
    if _BASE64_BREAKS.search(text):
        text = _BASE64_BREAKS.sub("", text)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"Image {index} is not valid base64") from None
    if not data:
        raise InvalidInput(f"Image {index} is empty")
    return data


# --- multipart parts -----------------------------------------------------------------------------------------------


def file_bytes(value: Any) -> Any:
    """A multipart part as the bytes it was sent as: an upload's content (Starlette has spooled it already, within
    the body limit), or a plain field's text taken back to its bytes (Starlette decodes such fields as UTF-8, or as
    Latin-1 when they are not UTF-8, which image files never are)."""
    if hasattr(value, "file"):  # an UploadFile
        value.file.seek(0)
        return value.file.read()
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return value.encode("utf-8")
    return value


def part_text(value: Any) -> Any:
    """A multipart text part, also when sent as a file (read as UTF-8)."""
    if hasattr(value, "file"):
        value.file.seek(0)
        try:
            return value.file.read().decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"The form field {value.filename or ''!r} is not UTF-8 text") from None
    return value


def label_list(value: Any) -> Any:
    """The multipart ``labels`` field (each part, if sent several times): a JSON list of labels, or labels separated
    by commas."""
    labels: list[Any] = []
    for part in value if isinstance(value, list) else [value]:
        text = part_text(part)
        if not isinstance(text, str):
            raise refuse("labels must be text: a JSON list of labels, or labels separated by commas")
        text = strip(text)
        if text.startswith("["):
            try:
                parsed = jsonsafe.loads(text)
            except jsonsafe.NestingError:
                raise BadRequest("labels is not valid JSON here: it is nested too deeply") from None
            except ValueError:
                raise BadRequest("labels is not valid JSON") from None
            if not isinstance(parsed, list) or not all(isinstance(label, str) for label in parsed):
                raise refuse("labels must be a JSON list of strings")
            labels += parsed
        else:
            labels += [strip(label) for label in text.split(",")]
    return labels


def label_list_pattern(max_items: int) -> str:
    """The multipart ``labels`` field as ``label_list`` reads it: labels separated by commas (each with a non-blank
    character; the first not starting with '[', which would make it JSON), or a JSON list of labels (written here
    without escapes); at most ``max_items`` of them."""
    more = f"{{0,{max_items - 1}}}"
    space = f"[{WHITESPACE}]*"
    commas = rf"^{space}[^{WHITESPACE},\[][^,]*(,[^,]*[^{WHITESPACE},][^,]*){more}$"
    char = r'[^"\\\x00-\x1f]'
    label = rf'"{char}*[^"\\\x00-\x1f{WHITESPACE}]{char}*"'
    json_space = r"[ \t\n\r]*"
    json_list = rf"^{space}\[{json_space}{label}({json_space},{json_space}{label}){more}{json_space}\]{space}$"
    return f"(?:{commas})|(?:{json_list})"


# --- the field types of one deployment -----------------------------------------------------------------------------


class Fields:
    """The field types of a deployment, its limits (``ServerSettings``) as constraints, and the checks of what a
    request costs in all. Every request model is built from these, so every route's body carries the limits."""

    def __init__(self, settings: Any, dim: int):
        s = self.settings = settings
        self.dim = dim
        self.max_items = s.max_items
        self.text = Annotated[str, StringConstraints(max_length=s.max_text_chars, pattern=NON_BLANK)]
        self.template = Annotated[str, StringConstraints(max_length=s.max_text_chars, pattern=TEMPLATE),
                                  WithJsonSchema({"type": "string", "pattern": TEMPLATE, "maxLength": s.max_text_chars,
                                                  "description": "A prompt with '{}' for the label"})]  # fmt: skip
        # base64 images are bounded by the body they come in
        self.base64_image = Annotated[
            str, StringConstraints(max_length=s.max_body_bytes), WithJsonSchema({**IMAGE_BASE64,
                                                                                "maxLength": s.max_body_bytes})
        ]  # fmt: skip
        self.image_file = Annotated[bytes, BeforeValidator(file_bytes), WithJsonSchema(IMAGE_FILE)]
        self.form_text = Annotated[self.text, BeforeValidator(part_text)]

    def items(self, item: Any, description: str | None = None) -> Any:
        """A list of 1 to ``max_items`` of ``item``, its length checked before its items are (pydantic checks a
        list's length first: a list of millions of wrong items costs one error, not one each)."""
        return Annotated[list[item], Field(min_length=1, max_length=self.max_items, description=description)]

    def texts(self, what: str, description: str | None = None) -> Any:
        """A list of texts the model reads as they are: ``items`` of ``text``, their characters counted in all."""

        def counted(texts: list[str]) -> list[str]:
            self.chars(texts, what)
            return texts

        return Annotated[self.items(self.text, description), AfterValidator(counted)]

    def chars(self, texts: Sequence[str], what: str) -> None:
        """The characters the model would read for one request, in all."""
        most = self.settings.max_request_chars
        total = sum(len(t) for t in texts)
        if total > most:
            raise refuse(f"The {what} have {total:,} characters in all (limit {most:,} per request)", "limit")

    def prompts(self, labels: list[str], templates: Any) -> None:
        """The prompts ``labels`` x ``templates`` would make, their number and characters, counted without making
        them (a template of 2,000 "{}" would make each prompt 2,000 labels long)."""
        self.chars(labels, "labels")
        try:
            per_label = zeroshot.templates_per_label(labels, templates)
        except ValueError as e:
            raise refuse(str(e)) from None
        count = chars = 0
        costs: dict[int, tuple[int, int]] = {}  # per template set (labels share them): (fixed characters, marks)
        for label, ts in zip(labels, per_label):
            if id(ts) not in costs:
                marks = sum(zeroshot.placeholders(t) for t in ts)  # {} or CLIP_benchmark's {c}
                costs[id(ts)] = (sum(len(zeroshot.PLACEHOLDER.sub("", t)) for t in ts), marks)
            fixed, marks = costs[id(ts)]
            count += len(ts)
            chars += fixed + marks * len(label)
        most = self.settings.max_prompts
        if count > most:
            raise refuse(f"The labels with their templates make {count:,} prompts, over the limit of {most:,} per "
                         "request: send fewer labels or templates", "limit")  # fmt: skip
        most = self.settings.max_request_chars
        if chars > most:
            raise refuse(f"The prompts have {chars:,} characters in all (limit {most:,} per request)", "limit")

    def check_pairs(self, texts: int, images: int) -> None:
        """A similarity request answers three numbers per (image, text) pair: their count is bounded, not only the
        texts and images (2,048 of each made a 218 MB answer)."""
        pairs, most = texts * images, self.settings.max_pairs
        if pairs > most:
            raise refuse(f"{texts:,} texts and {images:,} images make {pairs:,} pairs, over the limit of {most:,} per "
                         "request: send fewer of either", "limit")  # fmt: skip


# --- the /v1 API's requests ----------------------------------------------------------------------------------------


@dataclass
class Requests:
    """The request models of the ``/v1`` API for one deployment; ``*_form`` are the multipart forms of the routes
    that take uploads."""

    texts: type[BaseModel]
    images: type[BaseModel]
    images_form: type[BaseModel]
    classify: type[BaseModel]
    classify_form: type[BaseModel]
    similarity: type[BaseModel]
    search: type[BaseModel]
    search_form: type[BaseModel]


def _optional(schema: dict[str, Any]) -> None:
    """For fields that may be left out but not sent as null: no ``"default": null`` in their schema."""
    schema.pop("default", None)


QUERY_OR_IMAGE = {"anyOf": [{"required": ["query"]}, {"required": ["image"]}], "not": {"required": ["query", "image"]}}
TopK = Annotated[int, Field(ge=1, le=1000, description="How many results")]


def requests(f: Fields) -> Requests:
    # The deployment's field types, made at run time from its settings (so Any to a static type checker).
    # (capitalised: a class body cannot read a name of the function that it also annotates)
    Text: Any = f.text
    FormText: Any = f.form_text
    Base64Image: Any = f.base64_image
    ImageFile: Any = f.image_file
    Texts: Any = f.texts("texts", "Texts in any language")
    Labels: Any = f.items(f.text, "Candidate labels, in any language")  # their characters counted with the prompts'
    Images: Any = f.items(f.base64_image)
    ImageFiles: Any = f.items(f.image_file)
    name_or_list = Discriminator(lambda value: "a list" if isinstance(value, list) else "a name")
    Templates: Any = Annotated[
        Annotated[Annotated[TemplateMode, Tag("a name")]
                  | Annotated[f.items(f.template), Tag("a list")], name_or_list] | None,
        Field(description="'auto' (each label in the template set of its language), 'none' (the label alone), a "
              "language code (that template set), a list of templates with '{}' for the label, or null "
              "(transformers' 'This is a photo of {}.')"),
    ]  # fmt: skip

    class TextsRequest(BaseModel):
        texts: Texts

    class ImagesRequest(BaseModel):
        images: Images

        def image_bytes(self) -> list[bytes]:
            return [decode_base64(text, i) for i, text in enumerate(self.images)]

    class ImagesForm(BaseModel):
        images: ImageFiles

        def image_bytes(self) -> list[bytes]:
            return self.images

    class Classification(BaseModel):
        if TYPE_CHECKING:  # fields of each subclass
            labels: list[str]
            templates: zeroshot.Templates

        @model_validator(mode="after")
        def _prompts(self):
            f.prompts(self.labels, self.templates)
            return self

        def prompts(self) -> list[list[str]]:
            return zeroshot.label_prompts(self.labels, self.templates)

    class ClassifyRequest(Classification):
        image: Base64Image
        labels: Labels
        templates: Templates = "auto"

        def image_bytes(self) -> bytes:
            return decode_base64(self.image, 0)

    class ClassifyForm(Classification):
        image: ImageFile
        labels: Annotated[
            Labels,
            BeforeValidator(label_list),
            WithJsonSchema({"type": "string", "minLength": 1, "maxLength": f.settings.max_body_bytes,
                            "pattern": label_list_pattern(f.max_items),
                            "description": "Labels separated by commas, or a JSON list of labels (each within the "
                            "length limit of texts)"}),
        ]  # fmt: skip
        templates: Annotated[
            TemplateMode,
            BeforeValidator(part_text),
            Field(description="'auto', 'none' or a language code"),
        ] = "auto"

        def image_bytes(self) -> bytes:
            return self.image

    class SimilarityRequest(BaseModel):
        texts: Texts
        images: Images

        @model_validator(mode="after")
        def _pairs(self):
            f.check_pairs(len(self.texts), len(self.images))
            return self

        def image_bytes(self) -> list[bytes]:
            return [decode_base64(text, i) for i, text in enumerate(self.images)]

    class QueryOrImage(BaseModel, json_schema_extra=QUERY_OR_IMAGE):
        @model_validator(mode="after")
        def _one_of(self):
            if (self.query is None) == (self.image is None):
                raise refuse("Send a text query or an image (one of them)")
            return self

    class SearchRequest(QueryOrImage):
        query: Annotated[Text, Field(description="Text to search for", json_schema_extra=_optional)] = None
        image: Annotated[Base64Image, Field(description="Or an image to search with",
                                            json_schema_extra=_optional)] = None  # fmt: skip
        top_k: TopK = 10

        def image_bytes(self) -> bytes | None:
            return None if self.image is None else decode_base64(self.image, 0)

    class SearchForm(QueryOrImage):
        query: Annotated[FormText, Field(description="Text to search for", json_schema_extra=_optional)] = None
        image: Annotated[ImageFile, Field(description="Or an image to search with",
                                          json_schema_extra=_optional)] = None  # fmt: skip
        top_k: TopK = 10

        def image_bytes(self) -> bytes | None:
            return self.image

    return Requests(TextsRequest, ImagesRequest, ImagesForm, ClassifyRequest, ClassifyForm, SimilarityRequest,
                    SearchRequest, SearchForm)  # fmt: skip


# --- validation errors as sentences --------------------------------------------------------------------------------

# How messages name the items of each field: (the items, one of them). A field not here is named by its path.
NAMES = {
    "texts": ("texts", "Text"),
    "labels": ("labels", "Label"),
    "templates": ("templates", "Template"),
    "images": ("images", "Image"),
    "input": ("inputs", "Input"),
    "query": ("queries", "The query"),
    "text": ("texts", "The text"),
    "model_id": ("model ids", "The model id"),
}
# Whatever else is wrong with these fields, one sentence says what they take.
WHAT_THEY_TAKE = {"templates": TEMPLATES_HELP}
MISSING = {"labels": "Send the candidate labels (field 'labels')", "image": "Send the image (field 'image')"}


def validation_message(errors: Sequence[dict]) -> str:
    """Pydantic's errors as one line, ``field: what`` for the first few, in the API's words: limits name the item
    and the limit (``Too many texts: 90 (limit 64)``, ``Label 3 has 5,000 characters (limit 4,000)``)."""
    return "; ".join(_sentence(e) for e in errors[:5]) or "Invalid request"


def _sentence(error: dict) -> str:
    kind, ctx, value = error.get("type", ""), error.get("ctx") or {}, error.get("input")
    # where in the request (body, path, query: the first part) and union tags (which have spaces) are not fields
    loc = list(error.get("loc", ()))
    loc = [
        x
        for x in loc[1 if loc[:1] in (["body"], ["path"], ["query"]) else 0 :]
        if not (isinstance(x, str) and " " in x)
    ]
    field = next((x for x in loc if isinstance(x, str)), "")
    index = next((x for x in loc[1:] if isinstance(x, int)), None)
    plural, noun = NAMES.get(field, (field, field))
    item = noun if index is None else f"{noun} {index}"
    if kind in ("refused", "limit"):  # our own messages, complete
        return error["msg"]
    if kind == "missing" and field in MISSING and len(loc) == 1:
        return MISSING[field]
    if field not in NAMES:
        message = error.get("msg", "")
    elif kind == "too_long" and ctx.get("field_type") == "List":
        message = f"Too many {plural}: {ctx['actual_length']} (limit {ctx['max_length']})"
    elif kind == "too_short" and ctx.get("field_type") == "List" and field not in WHAT_THEY_TAKE:
        message = f"No {plural} given"
    elif kind == "string_too_long" and isinstance(value, str):
        message = f"{item} has {len(value):,} characters (limit {ctx['max_length']:,})"
    elif kind == "string_unicode":
        message = f"{item} is not valid Unicode (a lone surrogate)"
    elif kind == "string_pattern_mismatch" and ctx.get("pattern") == NON_BLANK:
        message = f"{item} is empty"
    elif kind == "string_pattern_mismatch" and ctx.get("pattern") == TEMPLATE:
        try:
            zeroshot.check_template(value)
        except ValueError as e:
            return str(e)
        message = TEMPLATES_HELP
    elif field in WHAT_THEY_TAKE:
        return WHAT_THEY_TAKE[field]
    else:
        message = error.get("msg", "")
    where = ".".join(str(x) for x in loc[:1] if x != "")
    return f"{where}: {message}" if where else message


# --- responses -----------------------------------------------------------------------------------------------------


class EmbeddingsResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="Unit-norm embeddings, one per input, in order")


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    labels: list[LabelScore] = Field(description="Every label with its probability, highest first")


class SimilarityResponse(BaseModel):
    cosine: list[list[float]] = Field(description="(images, texts) cosine similarities")
    logits_per_image: list[list[float]] = Field(description="Cosine similarities scaled by the model's temperature")
    probs: list[list[float]] = Field(description="Per image, the softmax of its logits over the texts")


class SearchHit(BaseModel):
    id: int = Field(description="The image's id in the index (for /v1/thumbnails/{id})")
    score: float = Field(description="Cosine similarity")
    name: str = Field(description="The file's name")
    duplicates: int = Field(description="Other indexed files with the same content")


class SearchResponse(BaseModel):
    results: list[SearchHit]


class IndexInfo(BaseModel):
    images: int


class Limits(BaseModel):
    """This deployment's limits (the settings of the same names)."""

    max_items: int
    max_body_bytes: int
    max_text_chars: int
    max_request_chars: int
    max_request_tokens: int
    max_prompts: int
    max_pairs: int
    max_pixels: int
    max_request_pixels: int
    max_queue: int
    max_queue_tokens: int
    request_timeout_s: float


class InfoResponse(BaseModel):
    model: str
    dim: int | None
    index: IndexInfo | None
    auth: bool = Field(description="Whether /v1/* needs a bearer token")
    limits: Limits


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    draining: bool
