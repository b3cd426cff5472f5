"""Placeholder planner for --mode inference: weights only. Replaced by the inference memory model."""

from __future__ import annotations

from vramfit.model.loaded import Model
from vramfit.result import Component, Parameters, Plan
from vramfit.settings import DTYPE_BYTES, Settings


def plan(model: Model, settings: Settings) -> Plan:
    count = model.architecture.parameter_count()
    weights = Component(name="weights", bytes=count.total * DTYPE_BYTES[settings.precision.dtype],
                        formula="parameters x bytes per parameter")
    parameters = Parameters(total=count.total, trainable=count.total, active=count.active, by_part=count.by_part)
    return Plan(components=(weights,), parameters=parameters)
