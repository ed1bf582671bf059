"""Settings sections whose models are imported only when a configuration has them.

The models of the alerting sections (receivers and their channels, routes, escalations,
inhibit rules, time intervals) and of the app-telemetry sources live beside the code that
uses them, and importing them costs about 3 MB of RSS for the daemon's whole life (issue 13's
memory budget; ``python -m bench.import_cost_bench``) and a quarter of a second at start.
A PostgreSQL-only configuration has none of them, so the settings model names them by
dotted path (``lazy("piggywatch.collectors.growth", "GrowthConfig")``) and each is imported
when a value is validated against it: an absent section or an empty list imports nothing.

A lazily named model validates exactly as the model itself: the errors are the model's own,
at the same key path (so the same file and line), and the validation context (load warnings)
is passed on. The config reference and the "did you mean" hints see through it with
``resolved``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from importlib import import_module
from typing import Annotated, Any

from pydantic import BaseModel, GetCoreSchemaHandler, ValidationInfo
from pydantic_core import CoreSchema, core_schema

__all__ = ["LazyModel", "lazy", "resolved"]


@dataclass(frozen=True)
class LazyModel:
    """The pydantic model ``name`` of ``module``, imported on first validation."""

    module: str
    name: str

    def model(self) -> type[BaseModel]:
        """The model itself (imports its module)."""
        # Every name in the settings resolves (the config reference test walks them all).
        model: type[BaseModel] = getattr(import_module(self.module), self.name)
        return model

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_plain_validator_function(self._validate)

    def _validate(self, value: Any, info: ValidationInfo) -> BaseModel:
        # A ValidationError raised here keeps its locations, under this field's path.
        return self.model().model_validate(value, context=info.context)


def lazy(module: str, name: str) -> Any:
    """An annotation standing for the model ``module.name`` (imported when validated)."""
    return Annotated[Any, LazyModel(module, name)]


def resolved(annotation: Any) -> Any:
    """``annotation`` itself, or the model it names lazily (imported now)."""
    if typing.get_origin(annotation) is Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, LazyModel):
                return meta.model()
    return annotation
