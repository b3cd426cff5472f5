"""Model sources in their order: a path or folder, the catalog, the local Hugging Face cache, the hub (mocked).

No test reaches the network: hub calls are replaced at huggingface_hub's boundary, and `no_sockets` makes any
attempt to open a socket fail the test.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_safetensors import write_safetensors

from vramfit.errors import InvalidConfig, MissingExtra, ModelNotFound, UnsupportedArchitecture
from vramfit.model.sources import cached_snapshot, hub_cache_dir, load_model

CATALOG = Path(__file__).parents[1] / "src" / "vramfit" / "model" / "catalog" / "configs"
LLAMA_3_1_8B = 8_030_261_248  # meta-llama/Llama-3.1-8B model card; sum of its safetensors header shapes

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# By hand: embed 128x64 + 2 x (q 64x64, k and v 32x64, o 64x64, gate/up/down 3 x 172x64, 2 norms of 64)
# + final norm 64 + lm_head 128x64 = 8192 + 2 x 45440 + 64 + 8192.
TINY_PARAMETERS = 107_328


def tiny_tensors(dtype: str = "BF16") -> dict[str, tuple[str, list[int]]]:
    """LlamaForCausalLM's state dict for TINY, names and shapes as transformers saves them."""
    tensors = {"model.embed_tokens.weight": (dtype, [128, 64]), "model.norm.weight": (dtype, [64]),
               "lm_head.weight": (dtype, [128, 64])}
    for i in range(2):
        p = f"model.layers.{i}."
        tensors |= {p + "self_attn.q_proj.weight": (dtype, [64, 64]), p + "self_attn.k_proj.weight": (dtype, [32, 64]),
                    p + "self_attn.v_proj.weight": (dtype, [32, 64]), p + "self_attn.o_proj.weight": (dtype, [64, 64]),
                    p + "mlp.gate_proj.weight": (dtype, [172, 64]), p + "mlp.up_proj.weight": (dtype, [172, 64]),
                    p + "mlp.down_proj.weight": (dtype, [64, 172]), p + "input_layernorm.weight": (dtype, [64]),
                    p + "post_attention_layernorm.weight": (dtype, [64])}
    return tensors


def model_folder(folder: Path, config: dict[str, Any] = TINY, tensors: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", tiny_tensors() if tensors is None else tensors)
    return folder


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a network socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so the developer's own cache never changes a result."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_config_json_path(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text((CATALOG / "meta-llama--Llama-3.1-8B.json").read_text())
    model = load_model(str(path))
    assert model.source == "config"
    assert model.architecture.parameter_count().total == LLAMA_3_1_8B
    assert model.stored is None
    assert model.weight_dtype == "bf16"  # its torch_dtype


def test_folder_reads_safetensors_headers(tmp_path: Path) -> None:
    model = load_model(str(model_folder(tmp_path / "tiny")))
    assert model.source == "folder"
    assert model.architecture.parameter_count().total == TINY_PARAMETERS
    assert model.stored is not None
    assert model.stored.elements_by_dtype == {"BF16": TINY_PARAMETERS}
    assert model.stored.tensors == 3 + 2 * 9
    assert model.notes == ()  # stored count and architecture agree
    assert model.weight_dtype == "bf16"  # no torch_dtype in the config: the stored dtype


def test_sharded_folder_reads_every_shard(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    tensors = list(tiny_tensors("F32").items())
    shards = {"model-00001-of-00002.safetensors": dict(tensors[:10]),
              "model-00002-of-00002.safetensors": dict(tensors[10:])}
    for name, part in shards.items():
        write_safetensors(folder / name, part)
    weight_map = {tensor: name for name, part in shards.items() for tensor in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_model(str(folder))
    assert model.stored is not None
    assert model.stored.elements_by_dtype == {"F32": TINY_PARAMETERS}
    assert model.weight_dtype == "fp32"


def test_stored_count_that_differs_gets_a_note_and_never_replaces_the_count(tmp_path: Path) -> None:
    tensors = tiny_tensors() | {"model.rotary_emb.inv_freq": ("F32", [8])}
    model = load_model(str(model_folder(tmp_path / "extra", tensors=tensors)))
    assert model.architecture.parameter_count().total == TINY_PARAMETERS
    assert len(model.notes) == 1
    assert f"{TINY_PARAMETERS + 8:,} elements" in model.notes[0]


def test_quantized_checkpoint_elements_are_not_parameters(tmp_path: Path) -> None:
    # GPTQ packs eight 4-bit weights per I32: q_proj's 64x64 weights are an 8x64 qweight.
    config = TINY | {"quantization_config": {"quant_method": "gptq", "bits": 4}}
    tensors = {"model.layers.0.self_attn.q_proj.qweight": ("I32", [8, 64]),
               "model.layers.0.self_attn.q_proj.scales": ("F16", [1, 64])}
    model = load_model(str(model_folder(tmp_path / "gptq", config=config, tensors=tensors)))
    assert model.architecture.parameter_count().total == TINY_PARAMETERS
    assert "packed or quantized" in model.notes[0]


def test_catalog_id_ignores_case() -> None:
    model = load_model("META-LLAMA/llama-3.1-8b")
    assert (model.source, model.name) == ("catalog", "meta-llama/Llama-3.1-8B")
    assert model.architecture.parameter_count().total == LLAMA_3_1_8B


def _cache_snapshot(cache: Path, repo_id: str, revision: str, *, main: bool = True) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = model_folder(repo / "snapshots" / revision)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_local_cache_is_read_by_hand(empty_cache: Path) -> None:
    _cache_snapshot(empty_cache, "acme/tiny", "aaaa")
    model = load_model("acme/tiny")
    assert model.source == "cache"
    assert model.architecture.parameter_count().total == TINY_PARAMETERS
    assert model.stored is not None
    assert model.stored.elements == TINY_PARAMETERS


def test_cache_uses_the_revision_refs_main_names(empty_cache: Path) -> None:
    _cache_snapshot(empty_cache, "acme/tiny", "old")
    newer = _cache_snapshot(empty_cache, "acme/tiny", "new", main=False)
    (newer.parent.parent / "refs" / "main").write_text("old\n")
    assert cached_snapshot("acme/tiny") == empty_cache / "models--acme--tiny" / "snapshots" / "old"


def test_cache_layout_agrees_with_huggingface_hub(empty_cache: Path) -> None:
    # huggingface_hub's own reader of its cache layout finds the same config.json as the hand-written one.
    huggingface_hub = pytest.importorskip("huggingface_hub")
    _cache_snapshot(empty_cache, "acme/tiny", "0123abcd")
    _cache_snapshot(empty_cache, "acme/tiny", "fedc9876", main=False)
    theirs = huggingface_hub.try_to_load_from_cache("acme/tiny", "config.json", cache_dir=empty_cache)
    snapshot = cached_snapshot("acme/tiny")
    assert snapshot is not None
    assert Path(str(theirs)) == snapshot / "config.json"


def test_cache_location_follows_huggingface_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub_cache_dir() == Path("~/.cache/huggingface/hub").expanduser()


def test_cached_config_without_weights_has_no_stored_summary(empty_cache: Path) -> None:
    snapshot = _cache_snapshot(empty_cache, "acme/tiny", "aaaa")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    model = load_model("acme/tiny")
    assert model.source == "cache"
    assert model.stored is None


def test_catalog_comes_before_the_cache(empty_cache: Path) -> None:
    _cache_snapshot(empty_cache, "meta-llama/Llama-3.1-8B", "aaaa")
    assert load_model("meta-llama/Llama-3.1-8B").source == "catalog"


def test_an_existing_path_comes_before_the_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_folder(tmp_path / "meta-llama" / "Llama-3.1-8B")
    monkeypatch.chdir(tmp_path)
    model = load_model("meta-llama/Llama-3.1-8B")
    assert (model.source, model.architecture.parameter_count().total) == ("folder", TINY_PARAMETERS)


@pytest.mark.parametrize("spec", ["./missing/config.json", "/no/such/folder", "../x/y/z", "~/nothing.json"])
def test_a_path_that_does_not_exist_is_named(spec: str) -> None:
    with pytest.raises(ModelNotFound, match="no such file or folder"):
        load_model(spec)


def test_unknown_hub_id_without_network_says_how_to_proceed() -> None:
    with pytest.raises(ModelNotFound, match="--allow-network.*config.json"):
        load_model("acme/unknown-model")


def test_malformed_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}')
    with pytest.raises(InvalidConfig, match=r"config.json: malformed JSON at line 3"):
        load_model(str(path))


def test_json_that_is_not_an_object_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(InvalidConfig, match="found a JSON list"):
        load_model(str(path))


def test_folder_without_config_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="no config.json in this folder"):
        load_model(str(tmp_path))


def test_unknown_model_type_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY | {"model_type": "wormhole", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(UnsupportedArchitecture, match=r"config.json: .*wormhole.*never runs"):
        load_model(str(path))


# The hub, replaced at huggingface_hub's boundary.

def _hub_metadata(tensors: dict[str, tuple[str, list[int]]]) -> Any:
    """What get_safetensors_metadata returns, built from huggingface_hub's own dataclasses."""
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    infos, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = 2 * _elements(shape)  # BF16: 2 bytes per element
        infos[name] = TensorInfo(dtype=dtype, shape=shape, data_offsets=(offset, offset + size))
        offset += size
    files = {"model.safetensors": SafetensorsFileMetadata(metadata={}, tensors=infos)}
    return SafetensorsRepoMetadata(metadata=None, sharded=False, files_metadata=files,
                                   weight_map=dict.fromkeys(infos, "model.safetensors"))


def _elements(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _http_error(cls: type[Exception], message: str) -> Exception:
    return cls(message, response=SimpleNamespace(headers={}, request=None, status_code=401))  # type: ignore[call-arg]


def test_hub_reads_config_and_safetensors_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: calls.append((repo_id, filename)) or str(path))
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata",
                        lambda repo_id, **kw: _hub_metadata(tiny_tensors("BF16")))
    model = load_model("acme/remote", allow_network=True)
    assert calls == [("acme/remote", "config.json")]
    assert model.source == "hub"
    assert model.stored is not None
    assert (model.stored.elements_by_dtype, model.stored.bytes) == ({"BF16": TINY_PARAMETERS}, 2 * TINY_PARAMETERS)
    assert model.stored.tensors == 3 + 2 * 9
    assert model.notes == ()


def test_hub_header_trouble_after_the_config_is_only_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))

    def timeout(*args: object, **kwargs: object) -> None:
        raise TimeoutError("read timed out")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(path))
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", timeout)
    model = load_model("acme/remote", allow_network=True)
    assert (model.source, model.stored) == ("hub", None)
    assert model.architecture.parameter_count().total == TINY_PARAMETERS
    assert "TimeoutError: read timed out" in model.notes[0]


def test_hub_is_not_asked_without_allow_network(monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub asked"))
    with pytest.raises(ModelNotFound):
        load_model("acme/remote")


@pytest.mark.parametrize(("error_name", "message"), [
    ("GatedRepoError", "is gated"),
    ("RepositoryNotFoundError", "was not found on the Hugging Face hub"),
    ("RemoteEntryNotFoundError", "has no config.json"),
])
def test_hub_errors_say_how_to_pass_a_local_config(monkeypatch: pytest.MonkeyPatch, error_name: str,
                                                    message: str) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    error = _http_error(getattr(huggingface_hub.errors, error_name), "401 Client Error")

    def raise_error(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raise_error)
    with pytest.raises(ModelNotFound, match=f"acme/private: {message}.*pass a local config.json"):
        load_model("acme/private", allow_network=True)


def test_hub_offline_or_unreachable_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Name or service not known\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ModelNotFound, match=r"\(ConnectionError: Name or service not known\); or pass a local"):
        load_model("acme/remote", allow_network=True)


def test_missing_hub_client_gives_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(MissingExtra, match=r"pip install 'vramfit\[hub\]'"):
        load_model("acme/remote", allow_network=True)


def test_default_weight_dtype_is_what_transformers_loads(tmp_path: Path) -> None:
    # Analytic versus real: from_pretrained with its default dtype="auto" on the same folder. Slow alone (about
    # 8 s importing transformers and its Llama module), well under a second when other tests imported them.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    fields = {k: v for k, v in TINY.items() if k not in ("architectures", "model_type")}
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).save_pretrained(tmp_path)  # F32 weights
    config = json.loads((tmp_path / "config.json").read_text())
    for declared in (None, "bfloat16"):
        config = {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")}
        (tmp_path / "config.json").write_text(json.dumps(config | ({"dtype": declared} if declared else {})))
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
        ours = load_model(str(tmp_path)).weight_dtype
        assert {"fp32": torch.float32, "bf16": torch.bfloat16}[ours] == loaded.dtype, declared
