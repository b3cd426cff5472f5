"""The GPU catalog: ids people can type, capacities as the driver reports them, each with its source."""

from __future__ import annotations

import pytest

from vramfit.errors import InvalidSetting
from vramfit.gpus import CATALOG, capacity_bytes, gpu_ids, lookup, normalize
from vramfit.units import GiB, MiB

CONTRACT_IDS = ("rtx-4090", "rtx-3090", "a100-80gb", "a100-40gb", "h100-80gb", "h200", "mi300x")


def test_the_contract_ids_exist() -> None:
    assert set(CONTRACT_IDS) <= set(gpu_ids())


def test_the_issue_list_is_covered() -> None:
    wanted = ("rtx-3060", "rtx-3070", "rtx-3090", "rtx-4090", "rtx-5090", "a10", "l4", "t4", "v100-16gb",
              "v100-32gb", "a100-40gb", "a100-80gb", "h100-80gb", "h100-94gb", "h200", "b200", "mi300x")
    assert set(wanted) <= set(gpu_ids())
    assert any(gpu.unified for gpu in CATALOG)   # Apple silicon


def test_ids_are_unique_lower_case_and_already_normal() -> None:
    ids = gpu_ids()
    assert len(ids) == len(set(ids))
    assert all(i == i.lower() == normalize(i) for i in ids)


@pytest.mark.parametrize("gpu", CATALOG, ids=lambda g: g.id)
def test_every_alias_finds_its_own_entry(gpu: object) -> None:
    for name in (gpu.id, gpu.name, *gpu.aliases):  # type: ignore[attr-defined]
        assert lookup(name) is gpu


@pytest.mark.parametrize("gpu", CATALOG, ids=lambda g: g.id)
def test_usable_memory_is_at_most_what_is_sold_and_cited(gpu: object) -> None:
    """The driver keeps a little; Apple keeps a quarter or so for the OS. A slip of units (GB for GiB, MiB for
    MB) would break the lower bound."""
    usable, sold = gpu.usable_bytes, gpu.memory_bytes  # type: ignore[attr-defined]
    share = 0.6 if gpu.unified else 0.9  # type: ignore[attr-defined]
    assert share * sold <= usable <= sold
    assert gpu.source and gpu.usable_source  # type: ignore[attr-defined]


def test_hand_checked_capacities() -> None:
    """nvidia-smi's totals: an H100 80GB shows 81559 MiB, an RTX 4090 24564 MiB; rocm-smi's MI300X total."""
    assert lookup("h100-80gb").usable_bytes == 81559 * MiB
    assert lookup("rtx-4090").usable_bytes == 24564 * MiB
    assert lookup("mi300x").usable_bytes == 205_822_885_888
    assert lookup("h100-80gb").memory_bytes == 80 * GiB


@pytest.mark.parametrize("typed,gpu_id", [
    ("NVIDIA RTX 4090", "rtx-4090"), ("RTX 4090", "rtx-4090"), ("4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("rtx_4090", "rtx-4090"), ("H100", "h100-80gb"),
    ("H100-80GB", "h100-80gb"), ("NVIDIA H100 80GB HBM3", "h100-80gb"), ("a100 80gb", "a100-80gb"),
    ("A100-80", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("Tesla T4", "t4"), ("h200", "h200"),
    ("AMD Instinct MI300X", "mi300x"), ("MI300X", "mi300x"),
])
def test_lookup_forgives_case_spaces_and_vendor_prefixes(typed: str, gpu_id: str) -> None:
    assert lookup(typed).id == gpu_id


@pytest.mark.parametrize("typed,suggested", [("rtx 4900", "rtx-4090"), ("a100", "a100-80gb"),
                                             ("h10", "h100-80gb")])
def test_an_unknown_name_suggests_the_nearest(typed: str, suggested: str) -> None:
    with pytest.raises(InvalidSetting, match="--gpu") as error:
        lookup(typed)
    assert suggested in str(error.value) and "--gpu-memory" in str(error.value)


def test_stated_memory_wins_over_the_catalog() -> None:
    assert capacity_bytes("rtx-4090", 20 * GiB) == 20 * GiB
    assert capacity_bytes("rtx-4090", None) == 24564 * MiB
    assert capacity_bytes(None, None) is None
    with pytest.raises(InvalidSetting, match="--gpu-memory"):
        capacity_bytes(None, 0)


def test_cli_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vramfit.cli import main

    assert main(["gpus", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in rows] == list(gpu_ids())
    assert all(row["usable_bytes"] == lookup(row["id"]).usable_bytes for row in rows)
