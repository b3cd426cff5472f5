"""DeepSpeed ZeRO-3's gathered parameters: its prefetcher keeps stage3_max_live_parameters elements gathered, plus at
most one parameter, and never partitions a parameter of at most stage3_param_persistence_threshold elements.

Sources (deepspeed v0.14.0, the same logic at v0.13.4 and v0.19.8): runtime/zero/partitioned_param_coordinator.py
fetch_sub_module 353-378 prefetches `min(max_live - n_available, prefetch_bucket)` elements at every module's fetch,
checking the cap before each parameter it adds; runtime/zero/config.py 217 (max_live 1e9) and 200 (persistence 1e5);
parameter_offload.py 242-259 (persistent parameters), stage3.py 1985-1986 (gathered again after each step).
Expected figures are derived by hand from those rules and the models' shapes, never from a measurement.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from by_hand import round512

from vramfit import Settings, estimate, load_model
from vramfit.errors import InvalidSetting
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import Parallelism

H, I, LAYERS, VOCAB = 1024, 2816, 8, 32000
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H,
         "intermediate_size": I, "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 8,
         "vocab_size": VOCAB, "max_position_embeddings": 4096, "tie_word_embeddings": False}
MODEL = Model(name="llama-tiny", architecture=read_architecture(LLAMA), source="config", config=LLAMA)
FULL = Settings().replace(mode="training", batch_size=1, seq_len=512, dtype="bf16", finetune="full",
                          grad_ckpt="full", gpus=2, zero_stage=3)
LINEARS = 4 * H * H + 3 * H * I     # q, k, v, o (8 kv heads = 8 heads) and gate, up, down: each over 1e5 elements
ROOT = VOCAB * H                    # the embedding, and the untied head: the largest parameters
NORMS = 2 * LAYERS + 1              # of h = 1024 elements: persistent, never gathered


def _memory(model: Model = MODEL, **changes: object) -> dict[str, int]:
    return estimate(model, FULL.replace(**changes)).memory.as_dict()


def test_a_model_below_max_live_stays_gathered_whole() -> None:
    """168M partitioned elements < 1e9: the prefetcher gathers every partitioned tensor and the cap never binds."""
    assert LAYERS * LINEARS + 2 * ROOT < 1_000_000_000
    assert _memory()["gathered_parameters"] == 2 * (LAYERS * LINEARS + 2 * ROOT)   # bf16, multiples of 512 bytes


def test_max_live_caps_the_prefetch_one_parameter_over() -> None:
    """10M live elements: the prefetch loop stops after the parameter that crosses the cap, at worst the largest."""
    assert _memory(zero_live=10_000_000)["gathered_parameters"] == 2 * 10_000_000 + 2 * ROOT


def test_qlora_counts_the_packed_data_against_max_live() -> None:
    """A 4-bit base weight is gathered as its packed bytes (one 4-bit pair per byte); the bf16 root stays bf16."""
    packed = LAYERS * sum(round512(n // 2) for n in (H * H,) * 4 + (H * I,) * 3)
    qlora = {"finetune": "qlora", "quant": "bnb-nf4-dq"}
    assert _memory(**qlora)["gathered_parameters"] == packed + 2 * 2 * ROOT
    assert _memory(**qlora, zero_live=1_000)["gathered_parameters"] == 2 * 1_000 + 2 * ROOT


def test_persistent_parameters_are_whole_beside_their_partition() -> None:
    """DeepSpeed's weights are FSDP's (the same shards) plus a whole bf16 copy of each norm."""
    deepspeed, fsdp = _memory()["weights"], _memory(zero_stage=0, fsdp="full")["weights"]
    assert deepspeed - fsdp == NORMS * round512(2 * H)


def test_llama_2_70b_qlora_on_2_gpus() -> None:
    """Partitioned elements (packed 4-bit linears in bf16 storage + the bf16 embedding and head) far exceed 1e9: the
    cap plus the largest parameter, the head (32,000 x 8,192), in bf16."""
    memory = _memory(load_model("meta-llama/Llama-2-70b-hf"), finetune="qlora", quant="bnb-nf4-dq", peft="0.9.0")
    assert memory["gathered_parameters"] == 2 * (1_000_000_000 + 32_000 * 8_192)   # 2,524,288,000 bytes


def test_llama_3_1_8b_full_fine_tuning() -> None:
    """The cap plus the largest parameter, the embedding (128,256 x 4,096), in bf16: 2.84 GiB, not two blocks."""
    memory = _memory(load_model("meta-llama/Llama-3.1-8B"), gpus=8)
    assert memory["gathered_parameters"] == 2 * (1_000_000_000 + 128_256 * 4_096)   # 3,050,673,152 bytes


def test_the_component_says_what_it_is() -> None:
    est = estimate(MODEL, FULL.replace(zero_live=10_000_000))
    component = next(c for c in est.memory.components if c.name == "gathered_parameters")
    assert component.inputs == {"layout": "ZeRO-3", "zero_live": 10_000_000, "persistence_threshold": 100_000}
    assert "stage3_max_live_parameters" in component.formula
    assert "partitioned_param_coordinator.py" in component.source


@pytest.mark.parametrize("bad", [0, -1])
def test_max_live_must_be_positive(bad: int) -> None:
    with pytest.raises(InvalidSetting, match="zero_live: .*--zero-live"):
        Parallelism(zero_live=bad).validate()


@pytest.mark.parametrize("changes", [{"zero_stage": 2}, {"zero_stage": 0, "fsdp": "full"}])
def test_max_live_is_refused_where_it_changes_nothing(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidSetting, match="zero_live: .*--zero 3"):
        estimate(MODEL, FULL.replace(zero_live=10_000_000, **changes))


def test_cli_carries_zero_live() -> None:
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vramfit", "estimate", "meta-llama/Llama-3.1-8B", "--mode",
                               "training", "--finetune", "full", "--dtype", "bf16", "--gpus", "8", "--zero", "3",
                               "--json", *extra], capture_output=True, text=True, check=False)

    done = run("--zero-live", "100M")
    assert done.returncode == 0, done.stderr
    assert '"gathered_parameters"' in done.stdout and str(2 * (100_000_000 + 128_256 * 4_096)) in done.stdout
    bad = run("--zero-live", "lots")
    assert bad.returncode != 0 and "--zero-live" in bad.stderr and "Traceback" not in bad.stderr
