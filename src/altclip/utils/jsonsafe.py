"""JSON from outside (checkpoint configs, tokenizer files, dataset lines, request fields) with its nesting bounded.

``json.loads`` recurses once per level: a few thousand ``[`` raise ``RecursionError`` (not ``ValueError``), and a
value a little shallower than that still makes every recursive consumer after it (validators, our own walks) recurse
as deep. ``loads`` turns both into a ``ValueError`` that says what is wrong, so a file or a field nested too deeply is
an error of that input, like any other malformed JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_DEPTH = 64  # far deeper than any config, tokenizer file or request we read (they nest 3 to 5 levels)


class NestingError(ValueError):
    """JSON nested more deeply than ``max_depth``."""


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``, refusing values nested more than ``max_depth`` arrays/objects deep with ``NestingError``;
    malformed JSON raises ``json.JSONDecodeError`` (a ``ValueError``) as usual."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise NestingError(f"JSON nested more than {max_depth} levels deep") from None
    check_depth(value, max_depth)
    return value


def read_json(path: str | os.PathLike, *, max_depth: int = MAX_DEPTH) -> Any:
    """A UTF-8 JSON file, as ``loads`` reads it; errors name the file."""
    try:
        return loads(Path(path).read_text(encoding="utf-8"), max_depth=max_depth)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    except NestingError as e:
        raise NestingError(f"{path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raises ``NestingError`` if ``value`` nests lists/dicts more than ``max_depth`` deep; walks without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            raise NestingError(f"JSON nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)
