"""Hypothesis strategies shared by the property tests. Add yours here, one per concept, with a docstring.

Import as `from strategies import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from functools import lru_cache

from hypothesis import strategies as st

from vramfit.gpus import CATALOG, GPU
from vramfit.model.catalog import catalog_ids
from vramfit.model.loaded import Model
from vramfit.settings import LoRA, Settings


@lru_cache(maxsize=None)
def catalog_model(model_id: str) -> Model:
    """A catalog model, loaded once per session (config.json from the package, no network)."""
    from vramfit.model.sources import load_model

    return load_model(model_id)


def catalog_models() -> st.SearchStrategy[Model]:
    """Every model of the catalog (`vramfit.model.catalog.catalog_ids()`)."""
    return st.sampled_from(catalog_ids()).map(catalog_model)


def gpus() -> st.SearchStrategy[GPU]:
    """Every GPU of the catalog."""
    return st.sampled_from(CATALOG)


def modes() -> st.SearchStrategy[str]:
    return st.sampled_from(("inference", "training"))


def batch_sizes(max_value: int = 64) -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=max_value)


def seq_lens(max_value: int = 32768) -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=max_value)


@st.composite
def workload_settings(draw: st.DrawFn, mode: str | None = None) -> Settings:
    """Settings for one GPU with a drawn mode, batch and length; training draws the memory options too."""
    chosen = mode or draw(modes())
    settings = Settings().replace(mode=chosen, batch_size=draw(batch_sizes()), seq_len=draw(seq_lens()))
    if chosen == "training":
        # LoRA on all linears: PEFT's name for a target every architecture has (q_proj, say, is not in MLA).
        settings = settings.replace(grad_ckpt=draw(st.sampled_from(("none", "selective", "full"))),
                                    finetune=draw(st.sampled_from(("full", "lora"))),
                                    lora=LoRA(rank=draw(st.sampled_from((8, 16, 64))), targets=("all-linear",)))
    return settings


def monotone_thresholds(low: int = 0, high: int = 1 << 20) -> st.SearchStrategy[tuple[int, int, int]]:
    """(low, high, threshold) with low <= high and low - 1 <= threshold <= high: the predicate n <= threshold
    is true up to the threshold and false after, the shape `search.largest` relies on."""
    return st.tuples(st.integers(low, high), st.integers(0, high - low)).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), st.just(pair[0] + pair[1]),
                               st.integers(pair[0] - 1, pair[0] + pair[1])))
