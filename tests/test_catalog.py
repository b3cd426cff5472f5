"""The offline catalog loader: ids, case-insensitive lookup with aliases, lazy cached reads, search."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vramfit.errors import InvalidConfig, ModelNotFound
from vramfit.model import catalog


def _clear_caches() -> None:
    for cached in (catalog._entries, catalog._by_name, catalog._config):
        cached.cache_clear()


@pytest.fixture
def fake_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A two-entry catalog in tmp_path, in the layout of src/vramfit/model/catalog."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "acme--Tiny-1B.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (tmp_path / "configs" / "acme--Other.json").write_text("[1, 2]")
    index = {"acme/Tiny-1B": {"file": "acme--Tiny-1B.json", "source": "s", "upstream": "u",
                              "aliases": ["tiny-1b"], "notes": "a small test model"},
             "acme/Other": {"file": "acme--Other.json", "aliases": [], "notes": ""}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    monkeypatch.setattr(catalog, "_root", lambda: tmp_path)
    _clear_caches()
    yield tmp_path
    _clear_caches()


def test_ids_are_sorted_and_lookups_ignore_case_and_accept_aliases(fake_catalog: Path) -> None:
    assert catalog.catalog_ids() == ("acme/Other", "acme/Tiny-1B")
    assert catalog.catalog_entry("ACME/tiny-1b").id == "acme/Tiny-1B"
    assert catalog.catalog_entry("Tiny-1B").id == "acme/Tiny-1B"
    assert catalog.catalog_entry("acme/Tiny-1B").upstream == "u"
    assert catalog.find_entry("acme/nothing") is None


def test_config_is_a_fresh_copy_each_time(fake_catalog: Path) -> None:
    first = catalog.catalog_config("acme/Tiny-1B")
    first["hidden_size"] = 999
    assert catalog.catalog_config("acme/Tiny-1B") == {"model_type": "llama", "hidden_size": 8}


def test_parsed_files_are_cached(fake_catalog: Path) -> None:
    catalog.catalog_config("acme/Tiny-1B")
    (fake_catalog / "configs" / "acme--Tiny-1B.json").write_text("not read again")
    (fake_catalog / "index.json").write_text("not read again")
    assert catalog.catalog_config("tiny-1b")["hidden_size"] == 8


def test_unknown_id_suggests_close_matches(fake_catalog: Path) -> None:
    with pytest.raises(ModelNotFound, match="acme/tiny-2b: not in the built-in catalog.*acme/Tiny-1B"):
        catalog.catalog_entry("acme/tiny-2b")


def test_a_config_that_is_not_an_object_is_invalid(fake_catalog: Path) -> None:
    with pytest.raises(InvalidConfig, match="acme--Other.json"):
        catalog.catalog_config("acme/Other")


def test_search_matches_every_word_in_ids_aliases_and_notes(fake_catalog: Path) -> None:
    assert [e.id for e in catalog.search_catalog("acme")] == ["acme/Other", "acme/Tiny-1B"]
    assert [e.id for e in catalog.search_catalog("SMALL tiny")] == ["acme/Tiny-1B"]
    assert catalog.search_catalog("llama") == []


def test_malformed_index_names_the_line(fake_catalog: Path) -> None:
    (fake_catalog / "index.json").write_text('{\n  "a": \n}')
    with pytest.raises(InvalidConfig, match="index.json: invalid JSON at line 3"):
        catalog.catalog_ids()


def test_importing_the_catalog_reads_nothing() -> None:
    code = ("import builtins, pathlib; opened = []\n"
            "orig = pathlib.Path.read_text\n"
            "pathlib.Path.read_text = lambda self, *a, **k: opened.append(self.name) or orig(self, *a, **k)\n"
            "import vramfit.model.catalog, vramfit.model.sources\n"
            "print(opened)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_shipped_catalog_has_llama_3_1_8b() -> None:
    _clear_caches()
    entry = catalog.catalog_entry("meta-llama/llama-3.1-8b")
    assert entry.id == "meta-llama/Llama-3.1-8B"
    config = catalog.catalog_config(entry.id)
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("llama", 4096, 32)


def test_every_shipped_entry_names_a_config_file_that_parses() -> None:
    _clear_caches()
    for model_id in catalog.catalog_ids():
        assert isinstance(catalog.catalog_config(model_id).get("model_type"), str), model_id


def test_the_shipped_glm_4_9b_chat_keeps_the_shape_fields_of_its_second_copy() -> None:
    """Every shape field of the shipped config equals the transformers printout of the same model in a
    LLaMA-Factory log (index.json notes): 40 layers, GQA 32/2 heads of 128, ffn 13696, 151552 tokens."""
    _clear_caches()
    entry = catalog.catalog_entry("glm-4-9b-chat")
    config = catalog.catalog_config(entry.id)
    shape = {key: config[key] for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                                          "multi_query_group_num", "kv_channels", "padded_vocab_size",
                                          "seq_length", "add_qkv_bias", "tie_word_embeddings")}
    assert (entry.id, shape) == ("THUDM/glm-4-9b-chat", {
        "num_layers": 40, "hidden_size": 4096, "ffn_hidden_size": 13696, "num_attention_heads": 32,
        "multi_query_group_num": 2, "kv_channels": 128, "padded_vocab_size": 151552, "seq_length": 131072,
        "add_qkv_bias": True, "tie_word_embeddings": False})
