"""What the commands share: the per-invocation ``Context``. Imports nothing heavy, so that
``takedown --help`` stays fast; the registry (SQLAlchemy, the index) is built on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.config import Settings

if TYPE_CHECKING:
    from registry.service import Registry


@dataclass
class Context:
    """Per-invocation state: settings from env + options, and a lazily built registry."""

    overrides: dict[str, Any]
    _settings: Settings | None = None
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env(**self.overrides)
        return self._settings

    def registry(self, *, load_index: bool = True) -> Registry:
        if self._registry is None:
            from registry.bootstrap import build_registry

            self._registry = build_registry(self.settings, load_index=load_index)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
