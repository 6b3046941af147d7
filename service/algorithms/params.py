"""Algorithm parameters declared once: each dataclass field's default, bounds and description.

The parameter types (:class:`~service.algorithms.NormParams`,
:class:`~service.algorithms.InvGCParams`) declare their fields with :func:`param` and validate
themselves with :func:`check_params`; ``service.settings`` derives its ``HUBLESS_*`` fields
(default, bounds, README description) from the same declarations, so none is restated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from service.algorithms.validation import InputError, check_count, is_real

#: the key of a field's :class:`Param` in its ``dataclasses.field`` metadata
PARAM = "param"


@dataclass(frozen=True)
class Param:
    """Bounds (``gt`` / ``ge`` / ``le``, None: unbounded) and the one-line description of a
    parameter; integers are parameters whose default is an ``int``, and only numbers (``kind``
    "int" or "float") are checked here (a choice checks itself)."""

    description: str
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    kind: str = "float"

    def check(self, name: str, value: object) -> None:
        """Raise :class:`InputError` naming ``name`` unless ``value`` is within the bounds."""
        if self.kind == "int":
            minimum = int(self.ge if self.ge is not None else 0)
            check_count(name, value, minimum)  # type: ignore[arg-type]
            if self.le is not None and value > self.le:  # type: ignore[operator]
                raise InputError(name, f"expected at most {self.le:g}, got {value!r}")
            return
        if self.kind != "float":
            return
        ok = is_real(value) and math.isfinite(value)  # type: ignore[arg-type]
        ok = ok and (self.gt is None or value > self.gt)  # type: ignore[operator]
        ok = ok and (self.ge is None or value >= self.ge)  # type: ignore[operator]
        ok = ok and (self.le is None or value <= self.le)  # type: ignore[operator]
        if not ok:
            within = f" {self.range()}" if self.range() else ""
            raise InputError(name, f"expected a finite number{within}, got {value!r}")

    def range(self) -> str:
        """The bounds in words: ``> 0``, ``>= 0``, ``in (0, 1]`` (empty when unbounded)."""
        if self.le is None:
            if self.gt is not None:
                return f"> {self.gt:g}"
            return "" if self.ge is None else f">= {self.ge:g}"
        low = "(-inf" if self.ge is None else f"[{self.ge:g}"
        return f"in {low if self.gt is None else f'({self.gt:g}'}, {self.le:g}]"

    def bounds(self) -> dict[str, float]:
        """The bounds as keyword arguments (``gt=0``), for a settings field."""
        given = (("gt", self.gt), ("ge", self.ge), ("le", self.le))
        return {key: value for key, value in given if value is not None}


def param(default: Any, description: str, **bounds: float) -> Any:
    """A dataclass field with its default, bounds (``gt`` / ``ge`` / ``le``) and description."""
    kind = {int: "int", float: "float"}.get(type(default), "other")
    spec = Param(description, kind=kind, **bounds)
    return dataclasses.field(default=default, metadata={PARAM: spec})


def param_spec(cls: type, name: str) -> tuple[Any, Param | None]:
    """(default, :class:`Param` or None) of field ``name`` of the parameter dataclass ``cls``."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return found.default, found.metadata.get(PARAM)


def check_params(instance: object) -> None:
    """Validate every :func:`param` field of a parameter dataclass instance."""
    for f in dataclasses.fields(instance):  # type: ignore[arg-type]
        spec = f.metadata.get(PARAM)
        if spec is not None:
            spec.check(f.name, getattr(instance, f.name))
