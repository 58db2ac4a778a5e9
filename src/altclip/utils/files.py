"""Image files on disk: which names are images, walking folders for them, and reading them within bounds.

The index, sharded embedding, training and evaluation all find and read images through this module (and decode
them in ``altclip.processing.decode_pool``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif")


def is_image_name(name: str | bytes) -> bool:
    """Whether a file name has one of the image suffixes (case-insensitive)."""
    text = os.fsdecode(name).lower()
    return text.endswith(IMAGE_SUFFIXES)


def display(path: bytes) -> str:
    """A file-system path as printable text; bytes that are not UTF-8 are shown as \\x.. escapes."""
    return path.decode("utf-8", "backslashreplace")


@dataclass
class Scan:
    files: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    failed: dict[bytes, str] = field(default_factory=dict)  # image-named paths we could not stat (broken links)
    problems: list[tuple[str, str]] = field(default_factory=list)  # directories we could not list


def scan(roots: Iterable[str | os.PathLike]) -> Scan:
    """Image files under ``roots``, following symbolic links without looping."""
    result = Scan()
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[bytes] = []
    for root in roots:
        path = os.fsencode(os.path.abspath(os.fspath(root)))
        if os.path.isfile(path):
            _add_file(result, path)
        else:
            stack.append(path)
    while stack:
        directory = stack.pop()
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen_dirs:
                continue  # a symbolic link back into a tree we already walk
            seen_dirs.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(directory))
        except OSError as e:
            result.problems.append((display(directory), f"could not list directory: {e.strerror}"))
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(entry.path)
            elif is_image_name(entry.name):
                _add_file(result, entry.path)
    return result


def _add_file(result: Scan, path: bytes) -> None:
    try:
        info = os.stat(path)
    except OSError as e:
        result.failed[path] = stat_failure(path, e)
        return
    if stat.S_ISREG(info.st_mode):
        result.files[path] = (info.st_size, info.st_mtime_ns)


def stat_failure(path: str | bytes | os.PathLike, error: OSError) -> str:
    """Why ``os.stat(path)`` failed, in words: a symbolic link loop, a broken link, a missing file, or the system's
    reason."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if error.errno == errno.ENOENT:
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    return f"could not be read: {error.strerror}"


def read_regular_file(path: str | bytes | os.PathLike, max_bytes: int) -> bytes:
    """The content of a regular file of at most ``max_bytes``. A FIFO or device put where a file was (which would
    block or never end) and a file over the limit are refused with a ValueError saying so, before anything is
    read; the system's errors are OSErrors."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):  # (a directory, which os.fdopen would refuse with a system error)
        os.close(fd)
        raise ValueError("not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > max_bytes:
            raise ValueError(f"{info.st_size:,} bytes, over the limit of {max_bytes:,} for an image file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read it
        raise ValueError(f"over the limit of {max_bytes:,} bytes for an image file")
    return data
