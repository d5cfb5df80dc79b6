"""Feeds the memory panels from the engine's events.

The engine reports, once per load, where the model's memory went (llama.cpp's
own buffer report); with every streamed text, how many tokens the KV cache
holds; about once a second, each device's memory; and per turn, the prompt's
make-up and the speeds. This turns those into the panels' plain views.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject

from kvchat.app.presenters.engine_client import EngineClient
from kvchat.engine.protocol import (
    LoadMemory,
    MemorySample,
    PromptEvaluated,
    ServerFigures,
    TurnStats,
)
from kvchat.ui.memory_panel import (
    DeviceView,
    KvView,
    MemoryPanel,
    ServerView,
    SpeedView,
    format_bytes,
)

# A decode-speed point on the plot at most this often.
SPEED_POINT_INTERVAL_S = 0.5


def device_note(sample: MemorySample) -> str:
    """Says plainly where the model runs when there is no GPU to show."""
    notes = [f"Reported by {sample.server.server}:"] if sample.server is not None else []
    if not sample.gpu_offload_supported:
        notes.append("CPU-only build: the model runs in RAM.")
    elif not any(device.kind != "cpu" for device in sample.devices):
        notes.append("No GPU found: the model runs in RAM.")
    if sample.note and sample.server is None:
        notes.append(sample.note)
    return " ".join(notes)


def saved_note(sample: MemorySample | None) -> str:
    """The conversations whose keys and values wait aside, in words ("" when none)."""
    if sample is None:
        return ""
    parts = []
    if sample.saved_states:
        parts.append(f"{sample.saved_states} in RAM, {format_bytes(sample.saved_state_bytes)}")
    if sample.disk_states:
        parts.append(f"{sample.disk_states} on disk, {format_bytes(sample.disk_state_bytes)}")
    return " · ".join(parts)


def _figure_text(value: float | int | str, unit: str) -> str:
    if isinstance(value, str):
        return value
    if unit == "bytes":
        return format_bytes(value)
    if unit == "%":
        return f"{value:.1f}%"
    if unit in ("tokens", "requests"):
        return f"{int(value):,} {unit}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3g}"


def server_view(figures: ServerFigures, local_kv: bool) -> ServerView:
    """A server's own figures for the panel, each with where it came from."""
    rows = tuple((f.label, _figure_text(f.value, f.unit), f.source) for f in figures.figures)
    note = figures.note
    if local_kv and not rows and not note:
        note = "The KV cache and memory figures above are this server's own."
    if figures.unavailable:
        missing = "; ".join(figures.unavailable[:3])
        note = f"{note} Not available: {missing}.".strip()
    return ServerView(
        server=figures.server,
        rows=rows,
        note=note,
        kv_tokens=figures.kv_used_tokens,
        n_ctx=figures.n_ctx,
        kv_fraction=figures.kv_used_fraction,
        local_kv=local_kv,
    )


def device_views(memory: LoadMemory, sample: MemorySample) -> list[DeviceView]:
    """Each device's memory, with this model's buffers on it."""
    buffers = {b.device: b for b in memory.buffers}
    views = []
    for device in sample.devices:
        held = buffers.get(device.name)
        views.append(
            DeviceView(
                name=device.name,
                description=device.description,
                total_bytes=device.total_bytes,
                free_bytes=device.free_bytes,
                weights_bytes=held.weights_bytes if held else 0,
                kv_bytes=held.kv_bytes if held else 0,
                compute_bytes=held.compute_bytes if held else 0,
            )
        )
    return views


class MemoryMonitor(QObject):
    """Connects an EngineClient's memory events to a MemoryPanel."""

    def __init__(self, panel: MemoryPanel, engine: EngineClient) -> None:
        super().__init__(panel)
        self.panel = panel
        self.memory: LoadMemory | None = None
        self.prompt: PromptEvaluated | None = None
        self.sample: MemorySample | None = None
        self.tokens = 0
        # The reply's thinking in the cache: counted as it streams (about a
        # token a piece), then exactly from the turn's figures.
        self.thinking_tokens = 0
        self.view_note = ""
        self._n_ctx = 0
        self._loaded_at = time.monotonic()
        self._speed_mark: tuple[float, int] | None = None
        engine.memory_reported.connect(self._on_memory_reported)
        engine.model_loaded.connect(self._on_model_loaded)
        engine.prompt_evaluated.connect(self._on_prompt)
        engine.cache_filled.connect(self._on_cache_filled)
        engine.thinking_received.connect(self._on_thinking)
        engine.memory_sampled.connect(self._on_sample)
        engine.turn_finished.connect(self._on_turn_finished)
        engine.host_exited.connect(self._on_host_exited)
        engine.load_progress.connect(self._on_load_progress)
        panel.kv_panel.clear_saved_requested.connect(engine.clear_saved_states)

    def _seconds(self) -> float:
        return time.monotonic() - self._loaded_at

    def kv_view(self) -> KvView | None:
        if self.memory is None or not self.memory.kv_caches:
            return None
        cache = self.memory.kv_caches[0]
        prompt = self.prompt
        return KvView(
            n_ctx=self._n_ctx,
            tokens=self.tokens,
            bytes_used=self.memory.kv_bytes_used(self.tokens),
            bytes_allocated=self.memory.kv_bytes,
            bytes_per_token=self.memory.kv_bytes_per_token,
            type_k=cache.type_k,
            type_v=cache.type_v,
            device=self.memory.kv_device,
            system_tokens=prompt.system_tokens if prompt else 0,
            history_tokens=prompt.history_tokens if prompt else 0,
            reused_tokens=prompt.reused_tokens if prompt else None,
            evaluated_tokens=prompt.evaluated_tokens if prompt else None,
            view_note=self.view_note,
            restored_tokens=prompt.restored_tokens if prompt else 0,
            restored_from=prompt.restored_from if prompt else "",
            restore_ms=prompt.restore_seconds * 1000 if prompt else 0.0,
            saved_note=saved_note(self.sample),
            thinking_tokens=self.thinking_tokens,
        )

    def set_model_view(self, note: str) -> None:
        """Says which messages the model still sees ("" when it sees them all)."""
        self.view_note = note
        self._show_kv()

    def _show_kv(self) -> None:
        view = self.kv_view()
        if view is not None:
            self.panel.set_kv(view, self._seconds())

    def _on_memory_reported(self, memory: LoadMemory) -> None:
        self._set_model(memory)

    def _set_model(self, memory: LoadMemory | None) -> None:
        """A new model's memory (None: none loaded); what the last one held is gone."""
        self.memory = memory
        self.prompt = None
        self.tokens = 0
        self._speed_mark = None

    def _on_model_loaded(self, info: object) -> None:
        self._n_ctx = int(getattr(info, "n_ctx", 0))
        self._loaded_at = time.monotonic()
        self.panel.reset()
        self.panel.set_server(None)
        if self.memory is not None and not self.memory.kv_caches:
            # A model on a server elsewhere: its figures come with its first sample.
            self.panel.kv_panel.show_empty("Asking the server about its KV cache…")
        self._show_kv()

    def engine_state_changed(self, state: str) -> None:
        """The supervisor's state (app.presenters.supervisor.State): a load asked
        for ends the last model's figures at once, not when the new engine
        first speaks (a new engine process takes a while to start)."""
        if state in ("starting", "loading"):
            self._load_begun()

    def _on_load_progress(self, _fraction: float) -> None:
        self._load_begun()

    def _load_begun(self) -> None:
        """Another load has begun: the last model's figures describe nothing now."""
        if self.memory is None:
            return
        self._set_model(None)
        self.panel.show_loading("Loading a model: its figures come once it is in memory.")

    def _on_host_exited(self, _event: object) -> None:
        self._set_model(None)
        self.panel.show_engine_stopped("The engine is not running: no model is in memory.")

    def _on_thinking(self, _request_id: int, _text: str) -> None:
        self.thinking_tokens += 1

    def _on_prompt(self, prompt: PromptEvaluated) -> None:
        self.prompt = prompt
        self.thinking_tokens = 0
        self.tokens = prompt.reused_tokens + prompt.evaluated_tokens
        self._speed_mark = (time.monotonic(), self.tokens)
        self._show_kv()

    def _on_cache_filled(self, tokens: int) -> None:
        self.tokens = tokens
        self._show_kv()
        now = time.monotonic()
        if self._speed_mark is None:
            self._speed_mark = (now, tokens)
            return
        then, tokens_then = self._speed_mark
        if now - then >= SPEED_POINT_INTERVAL_S:
            self.panel.add_speed_point(now - self._loaded_at, (tokens - tokens_then) / (now - then))
            self._speed_mark = (now, tokens)

    def _on_sample(self, sample: MemorySample) -> None:
        self.sample = sample
        if self.memory is None:
            return
        local_kv = bool(self.memory.kv_caches)
        if sample.server is not None:
            self.panel.set_server(server_view(sample.server, local_kv))
            if not sample.devices:
                self.panel.set_devices(
                    [],
                    f"The model runs on {sample.server.server}: its memory is that "
                    "server's, as it reports it below.",
                    self._seconds(),
                    None,
                )
                return
        if sample.tokens_in_cache >= 0:
            self.tokens = sample.tokens_in_cache
        kv_device = next((d for d in sample.devices if d.name == self.memory.kv_device), None)
        engine_bytes = kv_device.process_bytes if kv_device else None
        self.panel.set_devices(
            device_views(self.memory, sample), device_note(sample), self._seconds(), engine_bytes
        )
        self._show_kv()

    def _on_turn_finished(self, _request_id: int, _text: str, stats: TurnStats) -> None:
        self.thinking_tokens = stats.thinking_tokens
        if self.memory is None:
            return
        self._show_kv()
        if stats.decode_tokens_per_s > 0:
            self.panel.add_speed_point(self._seconds(), stats.decode_tokens_per_s)
        self._speed_mark = None
        kv_device = None
        if self.sample is not None:
            kv_device = next(
                (d for d in self.sample.devices if d.name == self.memory.kv_device), None
            )
        self.panel.set_speed(
            SpeedView(
                prefill_tokens_per_s=stats.prefill_tokens_per_s,
                decode_tokens_per_s=stats.decode_tokens_per_s,
                time_to_first_token_s=stats.time_to_first_token_s,
                # Each token reads every weight once, and the keys and values
                # of every token before it.
                bytes_read_per_token=self.memory.weights_bytes
                + self.memory.kv_bytes_used(self.tokens),
                peak_bandwidth_bytes_per_s=kv_device.peak_bandwidth_bytes_per_s
                if kv_device
                else None,
                device_kind=kv_device.kind if kv_device else "cpu",
                decode_threads=stats.decode_threads,
                threads_note=stats.threads_note,
            )
        )
