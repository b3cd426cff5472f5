"""The package's promises: a pinned public API, and an estimate path free of torch and transformers."""

import subprocess
import sys

import vramfit


def test_public_api_is_pinned() -> None:
    assert sorted(vramfit.__all__) == [
        "Architecture", "Component", "Estimate", "InvalidConfig", "InvalidSetting", "LoRA", "MemoryBreakdown",
        "MissingExtra", "Model", "ModelNotFound", "Parallelism", "Parameters", "Peak", "Precision", "Runtime",
        "Settings", "Training", "UnsupportedArchitecture", "VramfitError", "Workload", "estimate",
    ]


def test_import_and_cli_parser_do_not_import_torch_or_transformers() -> None:
    code = ("import sys, vramfit, vramfit.cli; vramfit.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
