"""CLIP_benchmark's own code, run in a process of its own: its ``build`` command (``python clip_benchmark_code.py
build FILES --output CSV``, as its console script runs it) and its WebDataset writer and reader (``import
clip_benchmark_code`` in a child process, then ``clip_benchmark.webdataset_builder``, ``build_wds_dataset``).

The package is installed without its dependencies (they pin another torch and its whole training stack, see the
Makefile). Its modules import torchvision, open_clip and pycocoevalcap for evaluating models, which ``build`` and the
WebDataset code never call: here they are empty stand-ins. Only in a child process, so that nothing else sees them
(transformers takes other image processors where it finds torchvision).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

STAND_INS = ("torchvision", "open_clip", "pycocoevalcap")


class _Empty(types.ModuleType):
    """A module whose every attribute is a class of that name, enough for ``from torchvision.datasets import X``."""

    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STAND_INS:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Empty(spec.name)

    def exec_module(self, module):
        pass


if "pytest" in sys.modules:
    raise ImportError("clip_benchmark_code installs stand-in modules: import it in a child process only")
sys.meta_path.insert(0, _StandIns())

if __name__ == "__main__":
    from clip_benchmark.cli import main

    sys.argv[0] = "clip_benchmark"
    sys.exit(main())
