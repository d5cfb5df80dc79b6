"""A load's estimate in the few words a person deciding on a download needs."""

from __future__ import annotations

from kvchat.app.core.formatting import format_bytes
from kvchat.engine.estimate import Estimate


def layers_on_gpu(result: Estimate) -> int:
    """How many of the model's layers the projected load puts on a GPU."""
    if not any(d.kind != "cpu" for d in result.projection.devices):
        return 0
    chosen = result.projection.load_params.n_gpu_layers
    return result.n_layers if chosen < 0 else min(chosen, result.n_layers)


def fits_answer(result: Estimate) -> str:
    """ "fits on the GPU: 5.1 of 24.0 GiB", "partly: 28 of 33 layers on the GPU",
    "fits in RAM: 0.2 of 20.1 GiB" or "does not fit: needs 31.0 GiB, 20.1 free".
    """
    devices = result.projection.devices
    gpus = [d for d in devices if d.kind != "cpu"]
    on_gpu = layers_on_gpu(result)
    if result.projection.fits:
        if gpus and on_gpu >= result.n_layers:
            used = sum(d.total_bytes for d in gpus)
            free = sum(d.free_bytes for d in gpus)
            return f"fits on the GPU: {format_bytes(used)} of {format_bytes(free)}"
        if gpus and on_gpu > 0:
            return f"partly: {on_gpu} of {result.n_layers} layers on the GPU"
        used = sum(d.total_bytes for d in devices)
        free = sum(d.free_bytes for d in devices if d.kind == "cpu")
        return f"fits in RAM: {format_bytes(used)} of {format_bytes(free)}"
    fit = result.fit
    if gpus and fit is not None and fit.max_gpu_layers:
        return f"partly: {fit.max_gpu_layers} of {result.n_layers} layers on the GPU"
    needed = sum(d.total_bytes + d.margin_bytes for d in devices)
    free = sum(d.free_bytes for d in devices)
    return f"does not fit: needs {format_bytes(needed)}, {format_bytes(free)} free"
