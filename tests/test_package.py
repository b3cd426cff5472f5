"""The package's promises: a pinned public API, and an estimate path free of torch and transformers."""

import subprocess
import sys

import vramfit


def test_public_api_is_pinned() -> None:
    assert sorted(vramfit.__all__) == [
        "Architecture", "Component", "Estimate", "InvalidConfig", "InvalidSetting", "LoRA", "MemoryBreakdown",
        "MissingExtra", "Model", "ModelNotFound", "Parallelism", "Parameters", "Peak", "Precision", "Runtime",
        "Settings", "Training", "UnsupportedArchitecture", "VramfitError", "Workload", "check", "estimate", "fit",
        "load_model", "max_batch", "max_context", "plan", "sweep", "what_to_change",
    ]


def test_import_and_cli_parser_do_not_import_torch_or_transformers() -> None:
    code = ("import sys, vramfit, vramfit.cli; vramfit.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_api_docs_examples_run() -> None:
    """docs/API.md's notebook example (three lines) and its search example run as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "API.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    notebook = blocks[0].strip().splitlines()
    assert len(notebook) == 3
    namespace: dict[str, object] = {}
    exec("\n".join(blocks[:2]), namespace)  # noqa: S102 - our own documentation
    result = namespace["result"]
    assert isinstance(result, vramfit.Estimate)
    assert "| kv_cache |" in result._repr_markdown_()
