"""A dict filled on first use: how the registries that modules add themselves to are served.

:class:`LazyDict` backs :data:`detector.config.PRESETS` and :data:`detector.hub.KNOWN_WEIGHTS`
(filled from the backbone registry, :mod:`detector.backbones`) and the detector families
(:mod:`detector.families`): the modules that register are imported on the first look-up, not when
the dict's own module is imported, so importing :mod:`detector.config` imports no backbone and no
family. Entries set on the dict directly (a test's ``monkeypatch.setitem``) win over loaded ones.
This module imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["LazyDict"]

V = TypeVar("V")


class LazyDict(dict[str, V]):
    """A ``dict`` whose entries come from ``load()`` (a mapping), called once, on first read."""

    def __init__(self, load: Callable[[], Mapping[str, V]]) -> None:
        super().__init__()
        self._load_fn: Callable[[], Mapping[str, V]] | None = load

    def _load(self) -> None:
        load, self._load_fn = self._load_fn, None
        if load is not None:
            for key, value in load().items():
                dict.setdefault(self, key, value)

    def __getitem__(self, key: str) -> V:
        self._load()
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._load()
        return dict.__repr__(self)

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return dict.get(self, key, default)

    def keys(self):  # type: ignore[override]
        self._load()
        return dict.keys(self)

    def items(self):  # type: ignore[override]
        self._load()
        return dict.items(self)

    def values(self):  # type: ignore[override]
        self._load()
        return dict.values(self)
