"""One registry per family of swappable parts (feature extractors, codebook kinds, quantizers, SSL models, ...).

A member is registered once, by name, with the dotted path of what builds it ("module:attribute"), so the
registry can list and check names at start-up without importing every member's heavy dependencies. Adding a
member is its module, its conf yaml and one `register` line; nothing else dispatches on the name."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError


class Registry:
    def __init__(self, config_key: str):
        self.config_key = config_key  # the config key whose value names a member, for error messages
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        if name in self._targets:
            raise ValueError(f"{self.config_key}: {name!r} is registered twice")
        self._targets[name] = target

    def names(self) -> list[str]:
        return sorted(self._targets)

    def check(self, name: str) -> None:
        if name not in self._targets:
            raise ConfigError(self.config_key, name, f"choose one of {self.names()}")

    def find(self, name: str) -> Any | None:
        """The member registered under `name`, or None for a family with optional members."""
        return self.get(name) if name in self._targets else None

    def get(self, name: str) -> Any:
        """The member registered under `name` (imported on first use)."""
        self.check(name)
        module, _, attribute = self._targets[name].partition(":")
        return getattr(importlib.import_module(module), attribute)
