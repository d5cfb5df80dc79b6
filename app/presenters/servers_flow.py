"""The servers dialog's owner: keeps the list and the keys, and tests a server.

Everything that may wait runs on one worker thread: asking a server which
kind it is (`engine.remote_servers.identify`), and reading or writing the
keys (a system keyring may wait on an unlock prompt). Results come back to
the GUI thread through queued signals, as plain strings and tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QWidget

from kvchat.app.core.servers import (
    MAX_NAME_LENGTH,
    Error,
    InvalidServerError,
    Server,
    ServerKeys,
    ServerList,
    check_address,
    new_server,
    new_server_list,
    read_servers,
    write_servers,
)
from kvchat.engine.remote_address import RemoteError, plain_http_key_warning
from kvchat.ui.servers_dialog import SavedServer, ServerRow, ServersDialog

if TYPE_CHECKING:
    import httpx

    from kvchat.engine.remote_servers import Identity

# Model names listed in a test's result before "and N more".
MODELS_SHOWN = 5


def default_client() -> httpx.Client:
    """The client a test connection asks through: no redirects, so the key goes nowhere else."""
    import httpx  # here: the window's launch does not wait for it

    return httpx.Client(timeout=httpx.Timeout(10, connect=5), follow_redirects=False)


def describe_identity(identity: Identity) -> str:
    """What answered, for a person: "llama-server b4567 · 3 models: a, b, c"."""
    name = identity.label
    if identity.version and identity.version not in name:
        name = f"{name} {identity.version}"
    ids = [model.id for model in identity.models]
    if not ids:
        return f"{name} · no models"
    shown = ", ".join(ids[:MODELS_SHOWN])
    if len(ids) > MODELS_SHOWN:
        shown += f" and {len(ids) - MODELS_SHOWN} more"
    return f"{name} · {len(ids)} model{'s' if len(ids) != 1 else ''}: {shown}"


def _planned_keys(rows: Sequence[SavedServer], old: dict[str, str | None]) -> dict[str, str | None]:
    """The key each address should have once saved; None: no key."""
    planned: dict[str, str | None] = dict.fromkeys(old)
    for row in rows:
        if row.api_key is not None:
            planned[row.base_url] = row.api_key or None
        else:
            planned[row.base_url] = old.get(row.previous_url) if row.previous_url else None
    return planned


class ServersFlow(QObject):
    """Opens the servers dialog, tests servers, and saves what the person chose.

    Signals:
        servers_changed(): the list or a key changed (saved).
        tested(str, str, bool): an address, what answered (or the error), and
            whether something OpenAI-compatible did; emitted on the worker.
        save_finished(str, object): "" and the ServerList saved, or why it
            could not be; emitted on the worker.
        keys_found(object): frozenset of the addresses with a key kept; on the worker.
    """

    servers_changed = Signal()
    tested = Signal(str, str, bool)
    save_finished = Signal(str, object)
    keys_found = Signal(object)

    def __init__(
        self,
        data_dir: Path,
        parent: QObject | None = None,
        *,
        keys: ServerKeys | None = None,
        client_factory: Callable[[], httpx.Client] = default_client,
    ) -> None:
        super().__init__(parent)
        self.data_dir = data_dir
        loaded = read_servers(data_dir)
        self._servers = loaded.servers
        # What was wrong with servers.json, once, in words ("" when nothing was).
        self.load_notice = loaded.notice
        self._keys = keys if keys is not None else ServerKeys.system(data_dir)
        self._client_factory = client_factory
        self._kept: frozenset[str] | None = None
        self._saving = False
        self.dialog: ServersDialog | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="servers")
        queued = Qt.ConnectionType.QueuedConnection
        self.tested.connect(self._show_test, queued)
        self.save_finished.connect(self._saved, queued)
        self.keys_found.connect(self._keys_found, queued)
        self._find_keys()

    # What the rest of kvchat asks.

    def servers(self) -> list[Server]:
        return list(self._servers.servers)

    def key_for(self, base_url: str) -> str | None:
        """The server's API key, or None; may wait on the system keyring, so
        call it off the GUI thread."""
        return self._keys.get(base_url)

    def keys_where(self) -> str:
        return self._keys.where()

    def close(self, wait: bool = False) -> None:
        """Stops the worker; a test in flight finishes on its own and is not shown.

        `wait` waits for it (for tests and for kvchat's own shutdown, not for the GUI).
        """
        self._worker.shutdown(wait=wait, cancel_futures=True)
        if self.dialog is not None:
            self.dialog.reject()

    # The dialog.

    def open(self, parent: QWidget | None = None) -> ServersDialog:
        """Shows the dialog (window-modal, it returns at once)."""
        if self.dialog is not None:
            self.dialog.raise_()
            return self.dialog
        kept = self._kept or frozenset()
        rows = [ServerRow(s.name, s.base_url, s.base_url in kept) for s in self._servers.servers]
        dialog = ServersDialog(
            rows,
            check_address,  # its InvalidServerError is the ValueError the dialog expects
            max_name_length=MAX_NAME_LENGTH,
            key_warning=plain_http_key_warning,
            parent=parent,
        )
        dialog.test_requested.connect(self._test)
        dialog.saved.connect(self._save)
        dialog.finished.connect(self._closed)
        notices = [self.load_notice, self._keys.notice, f"API keys go to {self._keys.where()}."]
        dialog.show_notice(" ".join(n for n in notices if n))
        self.load_notice = ""
        self.dialog = dialog
        dialog.open()
        return dialog

    def _closed(self) -> None:
        if self.dialog is not None:
            self.dialog.deleteLater()
            self.dialog = None

    def _find_keys(self) -> None:
        urls = [server.base_url for server in self._servers.servers]

        def run() -> None:
            self.keys_found.emit(frozenset(url for url in urls if self._keys.get(url)))

        self._worker.submit(run)

    def _keys_found(self, kept: frozenset[str]) -> None:
        self._kept = kept
        if self.dialog is not None:
            self.dialog.set_keys_kept(kept)

    # Test connection.

    def _test(self, base_url: str, typed_key: str, kept_key_of: str) -> None:
        if self.dialog is not None:
            kept = bool(kept_key_of) and kept_key_of in (self._kept or ())
            self.dialog.show_warning(
                plain_http_key_warning(base_url, typed_key or ("kept" if kept else ""))
            )

        def run() -> None:
            key = typed_key or (self._keys.get(kept_key_of) if kept_key_of else None)
            try:
                with self._client_factory() as client:
                    from kvchat.engine.remote_servers import identify

                    text, ok = describe_identity(identify(client, base_url, key)), True
            except RemoteError as exc:
                text, ok = str(exc), False
            except Exception as exc:  # a bug here must not leave the dialog waiting
                text, ok = f"the test failed ({type(exc).__name__})", False
            self.tested.emit(base_url, text, ok)

        self._worker.submit(run)

    def _show_test(self, base_url: str, text: str, ok: bool) -> None:
        if self.dialog is not None:
            self.dialog.show_test_result(base_url, text, ok)

    # Save.

    def _save(self, rows: list[SavedServer]) -> None:
        if self._saving or self.dialog is None:
            return
        try:
            servers = new_server_list(new_server(row.name, row.base_url) for row in rows)
        except InvalidServerError as exc:
            self.dialog.show_error(str(exc))
            return
        self._saving = True
        self.dialog.buttons.setEnabled(False)
        old_urls = [server.base_url for server in self._servers.servers]
        data_dir, keys = self.data_dir, self._keys

        def run() -> None:
            keys.notice = ""
            written: ServerList | None = None
            try:
                old = {url: keys.get(url) for url in old_urls}
                for row in rows:
                    if row.previous_url and row.previous_url not in old:
                        old[row.previous_url] = keys.get(row.previous_url)
                planned = _planned_keys(rows, old)
                write_servers(data_dir, servers)
                written = servers
                for url, key in planned.items():
                    if key != old.get(url):
                        keys.set(url, key)
                kept = frozenset(url for url, key in planned.items() if key)
            except Error as exc:
                self.save_finished.emit(str(exc), written)
                return
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                message = f"The list of servers could not be saved ({reason})."
                self.save_finished.emit(message, written)
                return
            self.keys_found.emit(kept)
            self.save_finished.emit("", servers)

        self._worker.submit(run)

    def _saved(self, error: str, servers: ServerList | None) -> None:
        self._saving = False
        if servers is not None:
            self._servers = servers
            self.servers_changed.emit()
        if self.dialog is None:
            return
        self.dialog.buttons.setEnabled(True)
        if error:
            self.dialog.show_error(error)
            return
        if self._keys.notice:
            # Saved, but a key went to the file: say so before the dialog closes.
            self.dialog.show_notice(f"Saved. {self._keys.notice}")
            return
        self.dialog.accept()
