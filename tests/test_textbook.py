"""The seeds' worked examples, reproduced number for number (shared/seeds, cited per case)."""

import pytest

from vramfit import textbook
from vramfit.textbook import Dims
from vramfit.units import GiB


def test_s4_bert_style_parameter_count_and_fp32_bytes() -> None:
    # [S4] 2.1: 23,834,112 embedding + 12 x 7,077,888 layer parameters = 108,768,768; x 4 B = 435,075,072 B.
    count = textbook.bert_style_parameters(vocab=30522, positions=512, hidden=768, layers=12)
    assert count == 108_768_768
    assert textbook.weights_bytes(count, "fp32") == 435_075_072


def test_s4_kv_cache_per_layer_and_total() -> None:
    # [S4] 2.4: 2 x 1 x 512 x 768 x 4 B = 3,145,728 B per layer, 12 layers.
    one_layer = Dims(batch=1, seq=512, hidden=768, heads=12, layers=1)
    assert textbook.kv_cache_bytes(one_layer, "fp32") == 3_145_728
    twelve = Dims(batch=1, seq=512, hidden=768, heads=12, layers=12)
    assert textbook.kv_cache_bytes(twelve, "fp32") == 12 * 3_145_728


def test_s0_one_billion_parameter_example() -> None:
    # [S0]: N = 1e9, B = 32, S = 1024, D = 4096: activations 32 x 1024 x 4096 x 4 B; training 4N + 4N + 8N.
    d = Dims(batch=32, seq=1024, hidden=4096, heads=32, layers=1)
    assert textbook.naive_activation_bytes(d) == 536_870_912
    assert textbook.training_bytes(10**9, "adam") == 16 * 10**9


def test_s1_llama_13b_mixed_precision_training_table() -> None:
    # [S1] 四/五: 26 GB fp16 weights + 26 GB fp16 gradients + 156 GB (m, v, fp32 master) = 208 GB.
    assert textbook.weights_bytes(13 * 10**9, "fp16") == 26 * 10**9
    assert textbook.training_bytes(13 * 10**9, "adamw") == 208 * 10**9


def test_s3_llama_7b_fp32_in_gib() -> None:
    # [S3]: 7000559616 x 4 / 1024^3 = 26.08 G.
    assert textbook.weights_bytes(7_000_559_616, "fp32") / GiB == pytest.approx(26.08, abs=0.005)


def test_korthikanti_activation_formula_by_hand() -> None:
    # [S1] 六.2: s·b·h·(34 + 5·a·s/h)·L with s=2048, b=1, h=4096, a=32, L=32.
    d = Dims(batch=1, seq=2048, hidden=4096, heads=32, layers=32)
    assert textbook.activations_bytes(d) == 2048 * 4096 * (34 + 5 * 32 * 2048 / 4096) * 32


def test_s2_rule_of_thumb_for_70b() -> None:
    # [S2] 经验法则: 70B x 2 bytes = 140 GB for inference, 4-6x for training.
    rule = textbook.rule_of_thumb(70 * 10**9, "fp16")
    assert (rule["inference"], rule["training_low"], rule["training_high"]) == (140e9, 560e9, 840e9)
