"""The Help menu's answers: About kvchat, the data folder, the engine's log,
and the diagnostics a bug report needs.

What only llama.cpp can say (its version, commit, backends and devices) comes
from the engine host's report as it starts (`HostStarted.build`): the GUI
process never loads llama.cpp. Until the host has reported, the About box
says so rather than guess.

The diagnostics hold what kvchat knows about the machine, the build, the
loaded model and the settings, and the end of the engine's log, and never a
conversation: no message, no reply, no system prompt (a conversation's or
the default one), no template a person wrote. The engine's log holds no
conversation text either: the host writes llama.cpp's load and allocation
lines and kvchat's own notes there, never a prompt.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtGui import QGuiApplication

from kvchat.app.core.settings import Settings
from kvchat.app.presenters.about import (
    NOT_REPORTED,
    devices_text,
    features_text,
    package_summary,
    package_version,
    version_rows,
)
from kvchat.app.presenters.controller import Controller
from kvchat.engine.client import read_log_tail
from kvchat.engine.protocol import (
    EngineBuild,
    HostStarted,
    LoadMemory,
    MemorySample,
    ModelInfo,
)
from kvchat.ui.memory_panel import format_bytes

# The end of the engine's log that goes into the diagnostics: enough for a
# crash's last words and the load before it.
LOG_TAIL_LINES = 50
DIAGNOSTICS_COPIED = "Diagnostics copied to the clipboard"
# A chosen prompt format that is one of llama.cpp's own, named, not written by a person.
BUILTIN_TEMPLATE_PREFIX = "llama.cpp:"


def settings_json(settings: Settings) -> str:
    """The settings as JSON, without what a person wrote for the model: the
    system prompt is left out (its length stays) and so is the text of a
    prompt format of their own."""
    data = settings.model_dump(mode="json")
    engine = data["engine"]
    prompt = str(engine.get("system_prompt", ""))
    engine["system_prompt"] = f"(left out: {len(prompt)} characters)" if prompt else ""
    engine["chat_templates"] = {
        model: template
        if template.startswith(BUILTIN_TEMPLATE_PREFIX)
        else f"(a template of {len(template)} characters, left out)"
        for model, template in dict(engine.get("chat_templates", {})).items()
    }
    return json.dumps(data, indent=2)


def cpu_name() -> str:
    """The CPU's model name, as the system says it ("" where it does not)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
                for line in info:
                    if line.lower().startswith(("model name", "hardware", "cpu model")):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor()


def system_lines() -> list[str]:
    """The operating system, the CPU, the RAM and how Qt draws the window."""
    import psutil  # here: the window's launch does not wait for it (app.gui)

    physical = psutil.cpu_count(logical=False)
    cores = f"{physical or '?'} cores, {os.cpu_count() or '?'} threads"
    app = QGuiApplication.instance()
    screen = QGuiApplication.primaryScreen() if app is not None else None
    display = QGuiApplication.platformName() if app is not None else "none"
    if screen is not None:
        size = screen.size()
        display += f", screen {size.width()}x{size.height()} at {screen.devicePixelRatio():g}x"
    return [
        f"OS: {platform.platform()} ({platform.machine()})",
        f"CPU: {cpu_name() or 'unknown'} ({cores})",
        f"RAM: {format_bytes(psutil.virtual_memory().total)}",
        f"Qt platform: {display}",
    ]


def device_lines(build: EngineBuild | None, sample: MemorySample | None) -> list[str]:
    """Each device with its memory from the engine's latest sample; before a
    model has loaded there is none, and the build's device list stands in."""
    if sample is None:
        listed = devices_text(build)
        return [f"{listed} (memory figures come once a model has loaded)"]
    lines = []
    for device in sample.devices:
        line = (
            f"{device.name} ({device.description}, {device.kind}): "
            f"{format_bytes(device.total_bytes)} total, {format_bytes(device.free_bytes)} free"
        )
        if device.process_bytes is not None:
            line += f", the engine holds {format_bytes(device.process_bytes)}"
        lines.append(line)
    if sample.note:
        lines.append(f"Note: {sample.note}")
    if sample.server is not None:
        lines.append(f"Reported by {sample.server.server}")
    return lines or ["none reported"]


def model_lines(model: ModelInfo | None, memory: LoadMemory | None) -> list[str]:
    """The loaded model and where its memory went, as the engine reported them."""
    if model is None:
        return ["none loaded"]
    lines = [
        f"{model.name}: {model.architecture}, {model.n_params:,} parameters, "
        f"{format_bytes(model.size_bytes)}",
        f"File: {model.path}",
        f"Context: {model.n_ctx} tokens (trained {model.n_ctx_train}); "
        f"{model.n_gpu_layers} of {model.n_layers} layers on the GPU; {model.n_threads} threads",
        f"Prompt format: {model.chat_template_source}; loaded in {model.load_seconds:.1f} s",
    ]
    if memory is not None:
        for buffers in memory.buffers:
            lines.append(
                f"{buffers.device}: weights {format_bytes(buffers.weights_bytes)}, "
                f"KV {format_bytes(buffers.kv_bytes)}, "
                f"compute {format_bytes(buffers.compute_bytes)}"
            )
    return lines


def _offload(build: EngineBuild | None) -> str:
    if build is None:
        return NOT_REPORTED
    return "supported by this build" if build.gpu_offload_supported else "not in this build"


def _section(title: str, lines: list[str]) -> str:
    return f"## {title}\n" + "".join(f"{line}\n" for line in lines) + "\n"


class HelpFlow(QObject):
    """Answers the window's Help menu for one controller and data folder.

    Keeps the engine's build report (`build`, None until a host has started):
    the build does not change while kvchat runs, so a restarted host's or a
    server's engine leaves the last one in place.
    """

    def __init__(self, controller: Controller, data_dir: Path) -> None:
        super().__init__(controller)
        self._controller = controller
        self._data_dir = data_dir
        self.build: EngineBuild | None = None
        window = controller.window
        window.about_requested.connect(self.show_about)
        window.data_folder_requested.connect(self.open_data_folder)
        window.engine_log_requested.connect(self.open_engine_log)
        window.diagnostics_requested.connect(self.copy_diagnostics)
        controller.engine.host_started.connect(self._on_host_started)

    def _on_host_started(self, event: HostStarted) -> None:
        if event.build is not None:
            self.build = event.build
            window = self._controller.window
            if window.about_is_open():  # else the rows are made when it opens
                window.refresh_about(*self._about())

    @property
    def log_path(self) -> Path:
        return self._controller.engine.log_path

    def _log_text(self) -> str:
        """The engine log's path, with why it is not in the data folder when it is not."""
        note = self._controller.engine.log_note
        return f"{self.log_path} ({note})" if note else str(self.log_path)

    def about_rows(self) -> list[tuple[str, str]]:
        """The About box's rows: the versions, the devices, where things are."""
        rows = version_rows(self.build)
        rows += [
            ("Devices", devices_text(self.build)),
            ("Features", features_text(self.build)),
        ]
        remote = self._controller.engine.remote
        if remote:
            rows.append(("Model server", remote))
        rows += [("Data folder", str(self._data_dir)), ("Engine log", self._log_text())]
        return rows

    def _about(self) -> tuple[str, str, list[tuple[str, str]]]:
        return f"kvchat {package_version('kvchat')}", package_summary("kvchat"), self.about_rows()

    def show_about(self) -> None:
        self._controller.window.show_about(*self._about())

    def open_data_folder(self) -> None:
        window = self._controller.window
        if not window.open_local(str(self._data_dir)):
            window.show_help_message(
                "Open data folder",
                f"No program here opens folders. kvchat's data folder is {self._data_dir}.",
            )

    def open_engine_log(self) -> None:
        """Opens the engine's log, or says in words why there is none to open."""
        window, engine = self._controller.window, self._controller.engine
        path = self.log_path
        if path.is_file() and path != Path(os.devnull):
            if not window.open_local(str(path)):
                window.show_help_message(
                    "Open engine log", f"No program here opens text files. The log is {path}."
                )
            return
        if engine.log_note:
            text = engine.log_note
        elif engine.remote:
            text = (
                f"The model runs on {engine.remote}, whose log is kept there. The engine on "
                f"this computer has not run yet; its log will be {path}."
            )
        else:
            text = (
                f"There is no engine log yet: the engine writes one to {path} once it has started."
            )
        window.show_help_message("Open engine log", text)

    def diagnostics(self) -> str:
        """The plain-text report for a bug: never a conversation's text."""
        controller, engine = self._controller, self._controller.engine
        monitor = controller.memory_monitor
        settings = controller.settings_file.read().model_copy(
            update={"engine": controller.settings}
        )
        if engine.remote:
            state = f"a server elsewhere: {engine.remote}"
        elif engine.pid is not None:
            state = f"running, pid {engine.pid}"
        else:
            state = "not running"
        build = self.build
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        tail = read_log_tail(self.log_path, LOG_TAIL_LINES).rstrip("\n")
        parts = [
            f"kvchat diagnostics, {stamp}\n"
            "(no conversation text and no system prompt are in this report)\n\n",
            _section("Versions", [f"{name}: {value}" for name, value in version_rows(build)]),
            _section(
                "Engine",
                [
                    f"Engine: {state}",
                    f"llama.cpp system info: {build.system_info if build else NOT_REPORTED}",
                    f"GPU offload: {_offload(build)}",
                ],
            ),
            _section("Devices", device_lines(build, monitor.sample)),
            _section("Model", model_lines(controller.model, monitor.memory)),
            _section("System", system_lines()),
            _section(
                "Folders", [f"Data folder: {self._data_dir}", f"Engine log: {self._log_text()}"]
            ),
            _section("Settings in effect", [settings_json(settings)]),
            _section(
                f"Engine log, the last {LOG_TAIL_LINES} lines",
                [tail or "(the log is empty or not written yet)"],
            ),
        ]
        return "".join(parts).rstrip("\n") + "\n"

    def copy_diagnostics(self) -> None:
        self._controller.window.copy_text(self.diagnostics(), DIAGNOSTICS_COPIED)
