"""The operations a user can start: a small registry of simulated kinds.

Each kind runs ``steps`` steps of ``step_seconds`` each. ``fail_at`` makes the
operation fail at that step (a failure the user sees, final); ``error_at``
simulates a bug in the worker at that step on every attempt, so the job is
retried and finally dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest


@dataclass(frozen=True)
class Param:
    type: type
    min: float
    max: float
    default: Any = None
    optional: bool = False
    help: str = ""

    def as_dict(self) -> dict:
        return {
            "type": self.type.__name__,
            "min": self.min,
            "max": self.max,
            "default": self.default,
            "optional": self.optional,
            "help": self.help,
        }


def _params(steps: int, step_seconds: float) -> dict[str, Param]:
    return {
        "steps": Param(int, 1, 100, steps, help="how many steps the operation runs"),
        "step_seconds": Param(float, 0.01, 30, step_seconds, help="seconds each step takes"),
        "fail_at": Param(int, 1, 100, None, True, "fail at this step, as a real error would"),
        "error_at": Param(
            int, 1, 100, None, True, "simulate a worker bug at this step: retried, then dead-lettered"
        ),
    }


@dataclass(frozen=True)
class Kind:
    name: str
    title: str
    description: str
    step_messages: tuple[str, ...]
    params: dict[str, Param] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "params": {n: p.as_dict() for n, p in self.params.items()},
        }

    def step_message(self, step: int, steps: int) -> str:
        text = self.step_messages[(step - 1) % len(self.step_messages)]
        return f"{text} ({step}/{steps})"

    def validate(self, params: object) -> dict:
        """Checked params with defaults filled in; BadRequest names the field."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest("params must be an object", "params")
        unknown = set(params) - set(self.params)
        if unknown:
            name = sorted(unknown)[0]
            raise BadRequest(f"unknown parameter {name!r} for {self.name}", f"params.{name}")
        clean: dict[str, Any] = {}
        for name, spec in self.params.items():
            value = params.get(name, spec.default)
            if value is None:
                if not spec.optional:
                    raise BadRequest(f"{name} is required", f"params.{name}")
                continue
            # bool is an int in Python; a checkbox sent by mistake is not a number.
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (spec.type is int and isinstance(value, float) and not value.is_integer())
            ):
                raise BadRequest(
                    f"{name} must be {'a whole number' if spec.type is int else 'a number'}", f"params.{name}"
                )
            value = spec.type(value)
            if not spec.min <= value <= spec.max:
                raise BadRequest(f"{name} must be between {spec.min:g} and {spec.max:g}", f"params.{name}")
            clean[name] = value
        for name in ("fail_at", "error_at"):
            if clean.get(name) is not None and clean[name] > clean["steps"]:
                raise BadRequest(f"{name} must be at most steps ({clean['steps']})", f"params.{name}")
        return clean


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "report",
            "Build a report",
            "Gathers figures and renders a PDF report.",
            ("Querying sales", "Aggregating figures", "Drawing charts", "Rendering pages"),
            _params(8, 0.5),
        ),
        Kind(
            "export",
            "Export a dataset",
            "Streams a table to a compressed file.",
            ("Reading rows", "Compressing a chunk", "Uploading a chunk"),
            _params(12, 0.3),
        ),
        Kind(
            "train",
            "Train a model",
            "Runs training epochs and reports the loss.",
            ("Running an epoch", "Evaluating", "Saving a checkpoint"),
            _params(20, 0.5),
        ),
    )
}


def get_kind(name: object) -> Kind:
    if not isinstance(name, str) or name not in KINDS:
        raise BadRequest(f"unknown operation kind {name!r}; known: {', '.join(KINDS)}", "kind")
    return KINDS[name]
