"""Measure the traced step for real on a CUDA GPU: random weights initialised on the device (nothing is
downloaded), a warm-up step, then the measured step.

Recorded per run, one truth row appended and flushed at once:
- torch.cuda.max_memory_allocated and max_memory_reserved over the measured step (peaks reset after the
  warm-up, so the caching allocator is already warm, as in a long run);
- the device's used memory from NVML (nvmlDeviceGetMemoryInfo(...).used, device-wide: the CUDA context,
  cuBLAS workspaces and anything else on the GPU included), read right after the step; None without
  nvidia-ml-py;
- the GPU name and capacity, the driver, CUDA, torch and transformers versions, and the full settings.
An out-of-memory error ends the step and is recorded as an OOM row (settings.gpu_memory = the capacity).
The step itself is trace.run_step, the same code the fake trace runs.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from vramfit.errors import InvalidSetting
from vramfit.model.loaded import Model
from vramfit.settings import Settings
from vramfit.truth.rows import Quantity, TruthRow, append_row
from vramfit.truth.trace import (
    build_model,
    prepare_step,
    require_torch,
    run_step,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    model: str
    settings: Settings
    allocated_bytes: int | None
    reserved_bytes: int | None
    device_bytes: int | None
    oom: bool
    env: dict[str, Any] = field(hash=False)
    seconds: float = 0.0
    error: str = ""

    def truth(self) -> dict[str, int]:
        values = {"allocated": self.allocated_bytes, "reserved": self.reserved_bytes, "device": self.device_bytes}
        return {} if self.oom else {k: v for k, v in values.items() if v is not None}


class _NoLabels:
    """The step's tracker interface; on a GPU the allocator's counters are the tracker."""

    def __init__(self, on_reset: Any = None) -> None:
        self._on_reset = on_reset

    def mark(self, tensors: Any, label: str) -> None:
        pass

    def reset_peak(self) -> None:
        if self._on_reset is not None:
            self._on_reset()


def cuda_environment(torch: Any) -> dict[str, Any]:
    """GPU name, capacity, driver and versions: what a measurement must say about where it ran."""
    import transformers

    properties = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "gpu_total_bytes": int(properties.total_memory),
            "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "driver": _nvml(lambda nvml, handle: _text(nvml.nvmlSystemGetDriverVersion())),
            "cuda": torch.version.cuda, "torch": torch.__version__, "transformers": transformers.__version__}


def nvml_used_bytes() -> int | None:
    """Device-wide used memory (nvidia-smi's "used"), or None when nvidia-ml-py is not installed."""
    used = _nvml(lambda nvml, handle: int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
    return None if used is None else int(used)


def _nvml(read: Any) -> Any:
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    nvml.nvmlInit()
    try:
        return read(nvml, nvml.nvmlDeviceGetHandleByIndex(0))
    finally:
        nvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def measure(model: Model | str, settings: Settings, *, device: str = "cuda") -> Measurement:
    """Warm-up step, then the measured step, on GPU 0 (`device` exists for tests: the CUDA counters are
    still read through torch.cuda, which the tests replace)."""
    torch = require_torch()
    model, settings = prepare_step(model, settings)
    if not torch.cuda.is_available():
        raise InvalidSetting("measure: no CUDA GPU is visible; run it on a machine with one, or use vramfit trace")
    env = cuda_environment(torch)
    start = time.perf_counter()
    try:
        _warm_then_measure(torch, model, settings, device)
    except torch.cuda.OutOfMemoryError as error:
        return _oom(torch, model, settings, env, start, error)
    allocated, reserved = int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
    return Measurement(model=model.name, settings=settings, allocated_bytes=allocated, reserved_bytes=reserved,
                       device_bytes=nvml_used_bytes(), oom=False, env=env, seconds=time.perf_counter() - start)


def _warm_then_measure(torch: Any, model: Model, settings: Settings, device: str) -> None:
    with torch.device(device):
        module = build_model(model, settings, [], fake=False)
        state: dict[str, Any] = {}
        run_step(torch, module, settings, _NoLabels(), state)          # warm-up
        torch.cuda.synchronize()
        tracker = _NoLabels(on_reset=torch.cuda.reset_peak_memory_stats)
        tracker.reset_peak()
        run_step(torch, module, settings, tracker, state)              # measured
        torch.cuda.synchronize()


def _oom(torch: Any, model: Model, settings: Settings, env: dict[str, Any], start: float,
         error: BaseException) -> Measurement:
    at_failure = int(torch.cuda.max_memory_allocated())
    torch.cuda.empty_cache()
    capacity = settings.replace(gpu_memory=env["gpu_total_bytes"])
    return Measurement(model=model.name, settings=capacity, allocated_bytes=at_failure, reserved_bytes=None,
                       device_bytes=None, oom=True, env=env, seconds=time.perf_counter() - start,
                       error=str(error).splitlines()[0][:300])


def measurement_row(result: Measurement, *, model_id: str, measure: str = "allocated", group: str = "",
                    row_id: str | None = None) -> TruthRow:
    from vramfit.truth.trace import settings_tag

    gpu = str(result.env.get("gpu", "gpu")).replace(" ", "-")
    # Every run is its own row (append_row never repeats an id): the run's UTC time ends the id.
    run = result.env.get("utc", "")
    return TruthRow(id=row_id or f"measure/{gpu}/{model_id}/{settings_tag(result.settings)}/{run}", kind="measured",
                    model=model_id, settings=result.settings.to_dict(), truth=result.truth(),
                    measure="device" if result.oom else cast(Quantity, measure), oom=result.oom, group=group,
                    breakdown={"allocated_at_failure": result.allocated_bytes} if result.oom else {},
                    env={**result.env, "seconds": round(result.seconds, 2)},
                    source={"tool": "vramfit measure", **({"error": result.error} if result.error else {})})


def default_output(env: dict[str, Any]) -> Path:
    return Path("data/truth/measured") / (str(env.get("gpu", "gpu")).replace(" ", "-") + ".jsonl")


def record(result: Measurement, path: str | Path, **row: Any) -> TruthRow:
    truth_row = measurement_row(result, **row)
    append_row(path, truth_row)
    return truth_row

