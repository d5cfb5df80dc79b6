"""The window's "Serve on localhost" switch: the API server on the window's own engine.

uvicorn runs on a thread of its own with its own event loop; requests go
to the window's engine through its link (app.engine_client.WindowEngineLink),
so they queue with the window's turns and the memory panels show them.
What the server does reaches the GUI thread as queued Qt signals.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

from kvchat.app.core.settings import EngineSettings, Settings
from kvchat.app.core.settings_file import SettingsFile
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.ui.main_window import MainWindow

if TYPE_CHECKING:
    from kvchat.app.api.background import BackgroundServer
    from kvchat.app.api.server import Activity, Gateway

DEFAULT_PORT = 8080


def examples(url: str, model: str) -> str:
    """How to call the server, for a person to copy: curl, then Python's openai package."""
    return (
        f"curl {url}/chat/completions \\\n"
        '  -H "Content-Type: application/json" \\\n'
        f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n'
        "\n"
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{url}", api_key="none")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}", messages=[{{"role": "user", "content": "Hello"}}]\n'
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )


class ApiService(QObject):
    """Starts and stops the API server beside the window.

    Signals:
        started(str): the URL it serves at.
        stopped(str): why it stopped ("" when asked to).
        activity(object): an api.server.Activity, as a request starts and ends.
        logged(str): the request's log line.
    """

    started = Signal(str)
    stopped = Signal(str)
    activity = Signal(object)
    logged = Signal(str)

    def __init__(self, engine: EngineClient, settings: EngineSettings, parent: QObject) -> None:
        super().__init__(parent)
        self._engine = engine
        self._settings = settings
        self._server: BackgroundServer | None = None
        self._gateway: Gateway | None = None
        self.url = ""

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, port: int = DEFAULT_PORT) -> bool:
        """Starts serving on 127.0.0.1; False (and `stopped` says why) if it cannot."""
        if self._server is not None:
            return True
        # Imported here: FastAPI and uvicorn take a quarter of a second to load,
        # which the window's launch need not wait for when nothing is served.
        from kvchat.app.api.background import BackgroundServer
        from kvchat.app.api.server import ServeOptions, api_sampling, create_app

        options = ServeOptions(port=port, sampling=api_sampling(self._settings.sampling()))
        app, gateway = create_app(self._engine.link, options, self.logged.emit)
        try:
            server = BackgroundServer(app, port=port)
        except OSError as exc:
            gateway.close()
            reason = (
                f"port {port} is in use by another program"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc))
            )
            self.stopped.emit(f"The API server could not start: {reason}.")
            return False
        gateway.on_activity = self._report
        self._server, self._gateway = server, gateway
        self.url = server.url + "/v1"
        self.started.emit(self.url)
        return True

    def _report(self, activity: Activity) -> None:
        # Called on the server's thread: the signal is queued to the GUI thread.
        self.activity.emit(activity)

    def stop(self) -> None:
        """Stops serving; requests in flight are cancelled.

        The server's thread ends by itself within a second (it is not joined
        here: the GUI thread never waits on a thread).
        """
        server, gateway = self._server, self._gateway
        self._server = self._gateway = None
        if server is None:
            return
        server.stop()
        if gateway is not None:
            gateway.close()
        self.url = ""
        self.stopped.emit("")


def attach_serving(
    window: MainWindow, engine: EngineClient, settings: Settings, settings_file: SettingsFile
) -> ApiService:
    """Wires the window's "Serve on localhost" switch to an API server on its engine.

    The choice is remembered in settings.json: a window that served, serves
    again when it next opens.
    """
    service = ApiService(engine, settings.engine, window)
    port = settings.serve_port

    def current_model() -> str:
        from kvchat.app.api.server import model_id  # loaded by now: the server runs

        model = engine.link.state().model
        return model_id(model) if model is not None else "MODEL"

    def on_started(url: str) -> None:
        window.show_serving(url, examples(url, current_model()))

    def on_stopped(reason: str) -> None:
        window.show_not_serving()
        if reason:
            window.chat_view.add_notice(reason)

    def on_activity(activity: Activity) -> None:
        if activity.done:
            window.show_api_activity(f"{activity.client}: {activity.summary}")
        else:
            window.show_api_activity(f"answering {activity.client} ({activity.path})")

    def on_toggled(on: bool) -> None:
        if on:
            service.start(port)
        else:
            service.stop()
        # A convenience: a read-only data folder only forgets the choice.
        settings_file.change({"serve_on_localhost": service.running})

    service.started.connect(on_started)
    service.stopped.connect(on_stopped)
    service.activity.connect(on_activity)
    service.logged.connect(window.add_api_log)

    def on_model_loaded(_info: object) -> None:
        if service.running:
            on_started(service.url)  # the examples name the model now loaded

    engine.model_loaded.connect(on_model_loaded)
    window.serve_toggled.connect(on_toggled)
    window.closing.connect(service.stop)
    if settings.serve_on_localhost:
        service.start(port)
    return service
