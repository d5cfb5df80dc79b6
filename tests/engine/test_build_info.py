"""llama.cpp's build, asked of the library: in this process and through the
short child the command line uses, which must agree."""

from __future__ import annotations

import llama_cpp
import pytest

from kvchat.engine.build_info import (
    ProbeFailedError,
    build_from_json,
    build_to_json,
    probe_engine_build,
)
from kvchat.engine.llama.build_probe import engine_build


def test_the_child_reports_what_the_library_says() -> None:
    here = engine_build()
    assert probe_engine_build() == here
    assert here.llama_cpp == llama_cpp.llama_version().decode()
    assert here.gpu_offload_supported == bool(llama_cpp.llama_supports_gpu_offload())
    assert "CPU" in here.backends
    assert any(device.kind == "cpu" for device in here.devices)
    assert here.system_info.startswith("CPU : ")
    assert here.commit and here.ggml


def test_the_report_survives_json() -> None:
    build = engine_build()
    assert build_from_json(build_to_json(build)) == build


@pytest.mark.parametrize(
    "text", ["", "[]", '{"llama_cpp": 5}', '{"backends": [1]}', '{"devices": [{"name": 1}]}']
)
def test_a_report_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ProbeFailedError, match="cannot be read"):
        build_from_json(text)
