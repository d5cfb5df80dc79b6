"""Reading llama.cpp's buffer lines, from this machine's log and from a recorded GPU load."""

from kvchat.engine.buffer_report import MIB, device_of_buffer, parse_buffer_report

# A CUDA load's buffer lines in the format llama.cpp logs them (the format its
# source prints; the figures are those of a 7B Q4_K_M with 20 of 33 layers on
# the GPU): weights split between the GPU and mapped host RAM.
CUDA_LOG = """
load_tensors: offloading 20 repeating layers to GPU
load_tensors:        CUDA0 model buffer size =  2571.35 MiB
load_tensors:   CPU_Mapped model buffer size =  4165.37 MiB
llama_context:  CUDA_Host  output buffer size =     0.12 MiB
llama_kv_cache:      CUDA0 KV buffer size =   320.00 MiB
llama_kv_cache:        CPU KV buffer size =   192.00 MiB
llama_kv_cache: size =  512.00 MiB (  4096 cells,  32 layers,  1/1 seqs), \
K (f16):  256.00 MiB, V (f16):  256.00 MiB
sched_reserve:      CUDA0 compute buffer size =   296.00 MiB
sched_reserve:  CUDA_Host compute buffer size =    16.01 MiB
sched_reserve:      CUDA0 compute buffer size =   300.01 MiB
""".replace("\\\n", "").splitlines()


def test_recorded_cuda_load() -> None:
    report = parse_buffer_report(CUDA_LOG)
    assert report.by_buffer("weights") == {
        "CUDA0": round(2571.35 * MIB),
        "CPU_Mapped": round(4165.37 * MIB),
    }
    assert report.by_buffer("kv") == {"CUDA0": 320 * MIB, "CPU": 192 * MIB}
    # The scheduler reserved CUDA0's compute buffer twice; the last report counts.
    assert report.by_buffer("compute") == {
        "CUDA0": round(300.01 * MIB),
        "CUDA_Host": round(16.01 * MIB),
    }
    assert report.by_buffer("output") == {"CUDA_Host": round(0.12 * MIB)}
    (cache,) = report.kv_caches
    assert (cache.cells, cache.layers, cache.type_k, cache.type_v) == (4096, 32, "f16", "f16")
    assert cache.bytes == 512 * MIB


def test_sliding_window_caches_are_two() -> None:
    lines = [
        "llama_kv_cache:        CPU KV buffer size =    26.00 MiB",
        "llama_kv_cache: size =   26.00 MiB (  4096 cells,   4 layers,  1/1 seqs), "
        "K (q8_0):   13.00 MiB, V (q8_0):   13.00 MiB",
        "llama_kv_cache:        CPU KV buffer size =     3.30 MiB",
        "llama_kv_cache: size =    3.30 MiB (  1024 cells,   2 layers,  1/1 seqs), "
        "K (q8_0):    1.65 MiB, V (q8_0):    1.65 MiB",
    ]
    report = parse_buffer_report(lines)
    # Both caches live in the CPU's memory: its KV buffers add up.
    assert report.by_buffer("kv") == {"CPU": 26 * MIB + round(3.30 * MIB)}
    assert [(c.cells, c.layers, c.type_k) for c in report.kv_caches] == [
        (4096, 4, "q8_0"),
        (1024, 2, "q8_0"),
    ]


def test_buffers_map_to_the_memory_that_holds_them() -> None:
    devices = ["CPU", "CUDA0", "CUDA1"]
    assert device_of_buffer("CUDA0", devices) == "CUDA0"
    assert device_of_buffer("CUDA1_Split", devices) == "CUDA1"
    assert device_of_buffer("CUDA_Host", devices) == "CPU"  # pinned host RAM
    assert device_of_buffer("CPU_REPACK", devices) == "CPU"
    assert device_of_buffer("CPU_Mapped", ["CPU"]) == "CPU"
