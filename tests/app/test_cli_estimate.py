"""`kvchat estimate`, run as a person or a script would run it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvchat.app.cli.main import main
from tests.model_factory import LLAMA_GQA, ModelFactory, model_factory

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it

LOAD_PARAMS = {
    "n_ctx",
    "n_batch",
    "n_ubatch",
    "n_gpu_layers",
    "type_k",
    "type_v",
    "flash_attn",
    "swa_full",
    "offload_kqv",
}
DEVICE_FIELDS = {"name", "weights_bytes", "kv_bytes", "compute_bytes", "total_bytes", "free_bytes"}


def test_json_for_scripts(model_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvchat.app",
            "estimate",
            str(model_path),
            "--json",
            "--ctx",
            "2048",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the object and nothing else
    assert set(data) == {"load_params", "kv_bytes_per_token", "devices", "fits", "warnings"}
    assert set(data["load_params"]) == LOAD_PARAMS
    assert data["load_params"]["n_ctx"] == 2048
    assert data["load_params"]["type_k"] == data["load_params"]["type_v"] == "f16"
    assert data["warnings"] == []
    assert data["kv_bytes_per_token"] == 23040
    assert data["fits"] is True
    (cpu,) = data["devices"]
    assert set(cpu) == DEVICE_FIELDS
    assert cpu["name"] == "CPU"
    assert cpu["kv_bytes"] == 2048 * 23040
    assert cpu["total_bytes"] == cpu["weights_bytes"] + cpu["kv_bytes"] + cpu["compute_bytes"]
    assert 0 < cpu["total_bytes"] < cpu["free_bytes"]
    # Notes go to stderr, where they do not break the JSON.
    assert "kvchat: note: " in result.stderr


def test_load_params_are_llama_cpp_python_keywords() -> None:
    """`load_params` are named as llama_cpp.Llama names its keywords (cache types by name)."""
    import llama_cpp

    keywords = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
    assert LOAD_PARAMS - keywords == set()


def test_fit_answers_on_request(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(model_path), "--json", "--fit"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fit"] == {"max_gpu_layers": None, "max_context": 8192}


def test_table_for_people(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--kv-type", "q8_0", "--flash-attention", "on", "--ctx", "2048"]
    code = main(["estimate", str(model_path), *arguments])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "SmolLM2-135M-Instruct.Q4_1 · context 2048 · K/V q8_0/q8_0 · flash attention on · "
        "batch 512 · 0 of 31 layers on the GPU"
    )
    header = ["device", "weights", "KV", "cache", "compute", "total", "free", "fits"]
    assert lines[2].split() == header
    assert lines[3].startswith("CPU") and lines[3].endswith("yes")
    assert "92.1 MiB" in lines[3]  # the weights, as llama.cpp reports them
    assert "KV cache: 12.0 KiB per token" in lines  # q8_0: 34 bytes per 32 values
    assert "Most GPU layers that fit at 2048 tokens: none (no GPU)" in lines
    assert "Largest context with every layer offloaded: 8192 tokens (the trained context)" in lines
    assert "note: this llama.cpp build has no GPU offload: every layer runs on the CPU" in lines


def test_bad_input_gets_one_line_and_code_2(
    tmp_path: Path,
    model_factory: ModelFactory,
    model_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "model.gguf"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("x", "y")
    missing = tmp_path / "missing.gguf"
    no_layers = model_factory.path(LLAMA_GQA.without("{arch}.block_count"))
    cases = [
        (
            [str(missing)],
            f"kvchat: could not estimate missing.gguf: the file does not exist ({missing})\n",
        ),
        (
            [str(archive)],
            "kvchat: could not estimate model.gguf: not a GGUF file: it starts with PK, "
            "a zip archive?\n",
        ),
        (
            [str(no_layers)],
            f"kvchat: {no_layers.name}: estimate unavailable: missing llama.block_count\n",
        ),
        (
            [str(model_path), "--ctx", "100"],
            "kvchat: --ctx 100 is out of range: it must be from 512 to 1,048,576\n",
        ),
        (
            [str(model_path), "--gpu-layers", "-1"],
            "kvchat: --gpu-layers -1 is out of range: it must be from 0 to 999\n",
        ),
    ]
    for args, message in cases:
        assert main(["estimate", *args]) == 2
        captured = capsys.readouterr()
        assert captured.err == message
        assert captured.out == ""


def test_unknown_kv_type_is_refused_by_name(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["estimate", str(model_path), "--kv-type", "q5_1"])
    assert exited.value.code == 2
    assert "argument --kv-type: invalid choice: 'q5_1'" in capsys.readouterr().err


def test_the_window_side_never_imports_llama_cpp() -> None:
    code = (
        "import sys, kvchat.app.cli.estimate, kvchat.engine.estimate, kvchat.engine.load_params; "
        "sys.exit('llama_cpp' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_a_context_past_the_trained_one_is_warned_about(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", str(model_path), "--ctx", "32768"]) == 0
    table = capsys.readouterr().out
    assert (
        "warning: the context (32,768 tokens) is larger than the model was trained for (8,192)"
        in table
    )
    assert main(["estimate", str(model_path), "--ctx", "32768", "--json"]) == 0
    captured = capsys.readouterr()
    (warning,) = json.loads(captured.out)["warnings"]
    assert warning.startswith("the context (32,768 tokens) is larger")
    assert "kvchat: warning: the context" in captured.err
