"""Optimizer states and step temporaries, checked by hand from the implementations cited in the module."""

from __future__ import annotations

from vramfit.memory.lora import ParamTensor
from vramfit.memory.optimizer import optimizer_memory

MATRIX = ParamTensor(elements=4096 * 1024, trainable=True, rows=4096, cols=1024)
VECTOR = ParamTensor(elements=1000, trainable=True)  # 4000 bytes in fp32 -> 4096 after rounding


def test_adamw_keeps_two_states_and_one_sqrt_copy() -> None:
    memory = optimizer_memory("adamw", [MATRIX, VECTOR], 4)
    assert memory.states == 2 * (4096 * 1024 * 4 + 4096)
    assert memory.step_temporaries == 4096 * 1024 * 4 + 4096


def test_bf16_parameters_get_bf16_adam_states() -> None:
    assert optimizer_memory("adamw", [MATRIX], 2).states == 2 * 4096 * 1024 * 2


def test_fused_adamw_has_no_temporaries_but_device_step_counters() -> None:
    memory = optimizer_memory("adamw-fused", [MATRIX, VECTOR], 4)
    assert memory.step_temporaries == 0
    assert memory.states == 2 * (4096 * 1024 * 4 + 4096) + 2 * 512


def test_sgd_keeps_nothing_and_momentum_one_copy() -> None:
    assert optimizer_memory("sgd", [MATRIX], 4).states == 0
    assert optimizer_memory("sgd-momentum", [MATRIX], 4).states == 4096 * 1024 * 4


def test_adafactor_factors_matrices_into_rows_and_columns() -> None:
    memory = optimizer_memory("adafactor", [MATRIX, VECTOR], 4)
    assert memory.states == 4096 * 4 + 1024 * 4 + 4096
    assert memory.step_temporaries == 2 * 4096 * 1024 * 4


def test_lion_keeps_one_state() -> None:
    assert optimizer_memory("lion", [MATRIX], 2).states == 4096 * 1024 * 2


def test_bnb_8bit_blockwise_states_and_small_tensors_in_fp32() -> None:
    memory = optimizer_memory("adamw-8bit", [MATRIX, VECTOR], 4)
    blocks = 4096 * 1024 // 256
    assert memory.states == 2 * (4096 * 1024 + blocks * 4) + 2 * 4096
    assert memory.paged == 0


def test_paged_8bit_states_live_outside_the_allocator() -> None:
    memory = optimizer_memory("paged-adamw-8bit", [MATRIX], 4)
    assert memory.states == 0
    assert memory.paged == 2 * (4096 * 1024 + 4096 * 1024 // 256 * 4)


def test_paged_32bit_adamw_keeps_two_fp32_states_in_unified_memory() -> None:
    memory = optimizer_memory("paged-adamw", [MATRIX], 2)
    assert (memory.states, memory.paged) == (0, 2 * 4096 * 1024 * 4)
