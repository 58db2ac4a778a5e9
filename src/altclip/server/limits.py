"""What one request may cost, one check per limit. Request validation (``schemas``) applies them, so that a bad
request is refused early with the limits /openapi.json documents; the service applies them again to whatever it is
handed (texts, labels, templates, prompts), so that every endpoint is bounded the same way whatever its schema.

``settings`` is the service's ``ServerSettings`` (or None, no limits: a model validated without a context).
Each check raises ``InvalidInput`` (422) with a message that names the item and the limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from altclip.server.errors import InvalidInput
from altclip.zeroshot import PLACEHOLDER, check_template, placeholders

# JSON Schema patterns are ECMA-262 regular expressions, whose whitespace (\s) is this set, not Python's (which also
# counts \x1c-\x1f and \x85). The patterns and the server's own checks both use it, so they agree on what is blank.
WHITESPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NON_BLANK = re.compile(rf"[^{WHITESPACE}]")


def _limit(settings: Any, name: str) -> int | None:
    return getattr(settings, name, None)


def check_count(items: Sequence[Any], what: str, settings: Any) -> None:
    """At least one item, and no more than ``max_items``."""
    if not items:
        raise InvalidInput(f"No {what} given")
    most = _limit(settings, "max_items")
    if most is not None and len(items) > most:
        raise InvalidInput(f"Too many {what}: {len(items)} (limit {most})")


def check_text(text: str, what: str, settings: Any) -> None:
    """Not blank, at most ``max_text_chars`` characters, and valid Unicode (no lone surrogates)."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} is not text")
    if not NON_BLANK.search(text):
        raise InvalidInput(f"{what} is empty")
    most = _limit(settings, "max_text_chars")
    if most is not None and len(text) > most:
        raise InvalidInput(f"{what} has {len(text):,} characters (limit {most:,})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (a lone surrogate)") from None


def check_texts(texts: Sequence[str], settings: Any, what: str = "texts", name: str = "Text") -> None:
    """Texts a request gives the model: their number, each text, and their characters in all."""
    check_count(texts, what, settings)
    for i, text in enumerate(texts):
        check_text(text, f"{name} {i}", settings)
    check_total_chars(texts, what, settings)


def check_total_chars(texts: Sequence[str], what: str, settings: Any) -> None:
    most = _limit(settings, "max_request_chars")
    total = sum(len(t) for t in texts)
    if most is not None and total > most:
        raise InvalidInput(f"The {what} have {total:,} characters in all (limit {most:,} per request)")


def check_templates(templates: Any, settings: Any) -> None:
    """A list of templates: their number, each one's length, and that each marks the label with ``{}`` only."""
    if isinstance(templates, str) or templates is None:
        return  # a mode or a language code: the built-in sets are within every limit
    check_count(templates, "templates", settings)
    for i, template in enumerate(templates):
        check_text(template, f"Template {i}", settings)
        try:
            check_template(template)
        except ValueError as e:
            raise InvalidInput(str(e)) from None


def check_json_size(body: bytes, settings: Any) -> None:
    """A JSON body with no more separators (commas) than any valid request has: a cheap bound, before parsing, on
    the number of values the body holds (a body of a million numbers costs the parser and the validation far more
    than its bytes)."""
    chars, items = _limit(settings, "max_request_chars"), _limit(settings, "max_items")
    if chars is None or items is None:
        return
    most = chars + 64 * items + 1024  # commas inside the texts, between the items, and between the other fields
    if body.count(b",") > most:
        raise InvalidInput(f"The body holds more JSON values than any request takes (over {most:,} commas)")


def check_prompts(prompts: Sequence[Sequence[str]], settings: Any) -> None:
    """The prompts of a classification (one list per label): their number and their characters in all."""
    check_prompt_cost(sum(len(p) for p in prompts), sum(len(p) for ps in prompts for p in ps), settings)


def prompt_cost(labels: Sequence[str], templates: Sequence[str]) -> tuple[int, int]:
    """How many prompts ``labels`` x ``templates`` make, and their characters in all, without making them (a
    template of 2,000 "{}" would make each prompt 2,000 labels long)."""
    marks = sum(placeholders(t) for t in templates)
    fixed = sum(len(PLACEHOLDER.sub("", t)) for t in templates)
    return len(labels) * len(templates), len(labels) * fixed + marks * sum(len(label) for label in labels)


def check_prompt_cost(count: int, chars: int, settings: Any) -> None:
    most = _limit(settings, "max_prompts")
    if most is not None and count > most:
        raise InvalidInput(
            f"The labels with their templates make {count:,} prompts, over the limit of {most:,} per request: send "
            "fewer labels or templates"
        )
    most = _limit(settings, "max_request_chars")
    if most is not None and chars > most:
        raise InvalidInput(f"The prompts have {chars:,} characters in all (limit {most:,} per request)")
