"""The servers a person chats through, and their API keys.

The list (a name and an address each) is kept in servers.json in the data
folder. The keys are not: they go to the system keyring (service "kvchat",
user name the server's address) when there is a usable one, else to
server-keys.json beside servers.json, which only its owner can read (0600).
No key is logged or put in an exception's message.

Neither file ever stops kvchat: a damaged one is put aside, read as an empty
list (or no keys), and the person is told once.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import keyring.errors
from keyring.backend import KeyringBackend
from keyring.backends import fail, null
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kvchat.app.core.settings_file import write_atomically
from kvchat.engine.remote_address import RemoteError, normalise_base_url

SERVERS_FILE = "servers.json"
KEYS_FILE = "server-keys.json"
# The keyring's service name; the user name is the server's address.
KEYRING_SERVICE = "kvchat"
MAX_NAME_LENGTH = 80
SCHEMA_VERSION = 1


class Error(Exception):
    """Something about the servers or their keys; the message is for a person."""


class InvalidServerError(Error, ValueError):
    """A name or an address that cannot be kept, or a list with one twice."""


class KeyStoreError(Error):
    """A key could be neither kept nor forgotten where it belongs."""


def check_name(text: str) -> str:
    """The name as kept (surrounding spaces dropped); InvalidServerError says what is wrong."""
    name = text.strip()
    if not name:
        raise InvalidServerError("Give the server a name.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidServerError(
            f"A server's name is at most {MAX_NAME_LENGTH} characters; this one has {len(name)}."
        )
    return name


def check_address(text: str) -> str:
    """The address as kept ("gpu-box:8080/v1/" -> "http://gpu-box:8080"), or InvalidServerError."""
    if not text.strip():
        raise InvalidServerError("Give the server's address, such as http://gpu-box:8080.")
    try:
        return normalise_base_url(text)
    except RemoteError as exc:  # BadAddressError, the only one it raises
        raise InvalidServerError(f"{exc}.") from None


class Server(BaseModel):
    """A server kvchat can chat through."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description=f"What the person calls it; unique, 1 to {MAX_NAME_LENGTH} characters."
    )
    base_url: str = Field(
        description="Its root, http:// or https://, without a trailing /v1 (normalised)."
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> object:
        return check_name(value) if isinstance(value, str) else value

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url(cls, value: object) -> object:
        return check_address(value) if isinstance(value, str) else value


class ServerList(BaseModel):
    """The servers, each name and each address once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, description="This file's layout.")
    servers: tuple[Server, ...] = Field(default=(), description="In the order they are shown.")

    @model_validator(mode="after")
    def _each_once(self) -> ServerList:
        names: dict[str, Server] = {}
        urls: dict[str, Server] = {}
        for server in self.servers:
            same_name = names.setdefault(server.name.casefold(), server)
            if same_name is not server:
                raise InvalidServerError(f"There is already a server called “{same_name.name}”.")
            same_url = urls.setdefault(server.base_url, server)
            if same_url is not server:
                raise InvalidServerError(
                    f"“{same_url.name}” already has the address {server.base_url}."
                )
        return self

    def find(self, name: str) -> Server | None:
        wanted = name.strip().casefold()
        return next((s for s in self.servers if s.name.casefold() == wanted), None)

    def at(self, base_url: str) -> Server | None:
        try:
            url = normalise_base_url(base_url)
        except RemoteError:
            return None
        return next((s for s in self.servers if s.base_url == url), None)


def _words(exc: ValidationError) -> str:
    """A validation error as the person's message (the first problem is enough)."""
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Error):
        return str(cause)
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def new_server(name: str, base_url: str) -> Server:
    """A Server from what a person typed; InvalidServerError says what is wrong, in words."""
    try:
        return Server(name=name, base_url=base_url)
    except ValidationError as exc:
        raise InvalidServerError(_words(exc)) from None


def new_server_list(servers: Iterable[Server]) -> ServerList:
    """The list of `servers`; InvalidServerError when a name or an address is there twice."""
    try:
        return ServerList(servers=tuple(servers))
    except ValidationError as exc:
        raise InvalidServerError(_words(exc)) from None


# servers.json.


@dataclass(frozen=True)
class LoadedServers:
    servers: ServerList
    # What was wrong with the file, in words; empty when it was fine or absent.
    notice: str


def servers_path(data_dir: Path) -> Path:
    return data_dir / SERVERS_FILE


def _salvage(entries: list[Any]) -> tuple[ServerList, list[str]]:
    """The entries that make a valid list, in order, and what was wrong with the others."""
    kept: list[Server] = []
    problems: list[str] = []
    for number, entry in enumerate(entries, start=1):
        try:
            server = Server.model_validate(entry)
            new_server_list([*kept, server])
        except ValidationError as exc:
            problems.append(f"entry {number} ({_words(exc)})")
        except InvalidServerError as exc:
            problems.append(f"entry {number} ({exc})")
        else:
            kept.append(server)
    return ServerList(servers=tuple(kept)), problems


def read_servers(data_dir: Path) -> LoadedServers:
    """The servers in the data folder's servers.json; never raises.

    A damaged file is renamed to servers.json.bad-<time> and replaced with
    the servers that could be read from it (none, when it is not a list at all).
    """
    path = servers_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LoadedServers(ServerList(), "")
    except (OSError, UnicodeDecodeError) as exc:
        return _replace_bad(path, f"it could not be read ({exc})", ServerList())
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        reason = "it is empty" if not text.strip() else "it is not valid JSON"
        return _replace_bad(path, reason, ServerList())
    entries = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return _replace_bad(path, "it does not hold a list of servers", ServerList())
    servers, problems = _salvage(entries)
    if not problems:
        return LoadedServers(servers, "")
    return _replace_bad(path, "some servers were wrong: " + "; ".join(problems), servers)


def _replace_bad(path: Path, reason: str, servers: ServerList) -> LoadedServers:
    backup = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    notice = (
        f"Your list of servers {path} could not be used fully: {reason}. "
        "The servers that could be read are kept; "
    )
    try:
        os.replace(path, backup)
        write_atomically(path, _servers_text(servers))
        notice += f"the old file is kept as {backup.name}."
    except OSError as exc:
        notice += f"the file could not be replaced ({exc})."
    return LoadedServers(servers, notice)


def _servers_text(servers: ServerList) -> str:
    return servers.model_dump_json(indent=2) + "\n"


def write_servers(data_dir: Path, servers: ServerList) -> bool:
    """Writes servers.json if it differs from `servers`; returns whether it wrote.

    Raises:
        OSError: the folder or the disk refused; the file is as it was.
    """
    path = servers_path(data_dir)
    text = _servers_text(servers)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)
    return True


# API keys.


def usable_backend(backend: KeyringBackend | None) -> KeyringBackend | None:
    """`backend`, unless it is keyring's stand-in for "there is no keyring"."""
    if backend is None or isinstance(backend, fail.Keyring | null.Keyring):
        return None
    return backend


def system_backend() -> KeyringBackend | None:
    """The system keyring that the keyring package finds, or None when there is none usable."""
    try:
        return usable_backend(keyring.get_keyring())
    except Exception:  # a broken backend's import or configuration: use the file
        return None


def backend_name(backend: KeyringBackend) -> str:
    """The keyring for a person: "SecretService", "macOS", "Windows", "kwallet"..."""
    inner = getattr(backend, "backends", None)  # keyring's chainer tries several in turn
    if isinstance(inner, list | tuple) and inner:
        return ", then ".join(backend_name(b) for b in inner if isinstance(b, KeyringBackend))
    return type(backend).__module__.rsplit(".", 1)[-1]


def _reason(exc: BaseException, key: str | None) -> str:
    """Why a backend failed, without the key in it even if the backend quoted it."""
    text = str(exc) or type(exc).__name__
    if key:
        text = text.replace(key, "…")
    return text


class ServerKeys:
    """The servers' API keys: in the system keyring, else in a file only its owner reads.

    A key that the keyring refuses to keep goes to the file instead (and
    `notice` says so), so that it is never lost. `get` looks in both.
    Thread-safe: the flow's worker and the engine may ask at once.
    """

    def __init__(
        self,
        data_dir: Path,
        backend: KeyringBackend | None,
        find_backend: Callable[[], KeyringBackend | None] | None = None,
    ) -> None:
        """Keeps keys in `backend`, or only in the file when it is None; with
        `find_backend`, the backend is what it finds when a key is first needed."""
        self.path = data_dir / KEYS_FILE
        self._found: KeyringBackend | None = usable_backend(backend)
        self._find_backend = find_backend
        self._finding = threading.Lock()
        self._lock = threading.Lock()
        # What went wrong last, for a person; "" when nothing did.
        self.notice = ""

    @classmethod
    def system(cls, data_dir: Path) -> ServerKeys:
        """Keys in the system keyring, where there is one. Finding it (which may
        wait for the keyring to start) waits until a key is first asked for, so
        the window does not wait for it as it opens."""
        return cls(data_dir, None, system_backend)

    @property
    def _backend(self) -> KeyringBackend | None:
        with self._finding:
            if self._find_backend is not None:
                self._found, self._find_backend = self._find_backend(), None
            return self._found

    def where(self, base_url: str | None = None) -> str:
        """Where keys go, for a person; with `base_url`, where that server's key is now."""
        in_file = base_url is not None and _url(base_url) in self._read_file()
        if self._backend is None or in_file:
            return f"a file readable only by you: {self.path}"
        return f"the system keyring ({backend_name(self._backend)})"

    def get(self, base_url: str) -> str | None:
        """The server's key, or None; never raises (a keyring that fails is passed over)."""
        url = _url(base_url)
        with self._lock:
            if self._backend is not None:
                try:
                    key = self._backend.get_password(KEYRING_SERVICE, url)
                except Exception as exc:  # any backend: D-Bus, a locked or refused keyring
                    # Only the kind of error: what a backend says might quote what it holds.
                    self.notice = f"The system keyring could not be read ({type(exc).__name__})."
                else:
                    if key:
                        return key
            return self._read_file().get(url) or None

    def set(self, base_url: str, key: str | None) -> None:
        """Keeps `key` for the server; None or "" forgets it.

        Raises:
            KeyStoreError: neither the keyring nor the file could keep it, or
                the keyring would not forget it; the message holds no key.
        """
        url = _url(base_url)
        with self._lock:
            if key:
                self._keep(url, key)
            else:
                self._forget(url)

    def _keep(self, url: str, key: str) -> None:
        if self._backend is not None:
            try:
                self._backend.set_password(KEYRING_SERVICE, url, key)
            except Exception as exc:  # any backend error: keep the key in the file instead
                self.notice = (
                    f"The system keyring did not take the key for {url} "
                    f"({_reason(exc, key)}): it is kept in a file readable only by you, "
                    f"{self.path}."
                )
            else:
                self._file_without(url)
                return
        keys = self._read_file()
        keys[url] = key
        self._write_file(keys)

    def _forget(self, url: str) -> None:
        if self._backend is not None:
            try:
                self._backend.delete_password(KEYRING_SERVICE, url)
            except keyring.errors.PasswordDeleteError:
                pass  # there was none
            except Exception as exc:  # some fail where there is nothing to forget
                if self._in_keyring(url):
                    raise KeyStoreError(
                        f"The system keyring did not forget the key for {url} "
                        f"({type(exc).__name__})."
                    ) from None
        self._file_without(url)

    def _in_keyring(self, url: str) -> bool:
        """Whether the keyring still holds a key for `url` (True when it cannot tell)."""
        assert self._backend is not None
        try:
            return self._backend.get_password(KEYRING_SERVICE, url) is not None
        except Exception:  # any backend error: it may still be there
            return True

    def _file_without(self, url: str) -> None:
        keys = self._read_file()
        if url in keys:
            del keys[url]
            self._write_file(keys)

    def _read_file(self) -> dict[str, str]:
        try:
            if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
                os.chmod(self.path, 0o600)
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else None
            self.notice = (
                f"The file of API keys {self.path} could not be read "
                f"({reason or type(exc).__name__})."
            )
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, dict):
            self.notice = (
                f"The file of API keys {self.path} is damaged: its keys are not read, and "
                "the next key kept replaces it."
            )
            return {}
        return {str(url): key for url, key in keys.items() if isinstance(key, str) and key}

    def _write_file(self, keys: dict[str, str]) -> None:
        try:
            if not keys:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"schema_version": SCHEMA_VERSION, "keys": keys}, indent=2) + "\n"
            _write_private(self.path, text)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise KeyStoreError(
                f"The API key could not be kept in {self.path} ({reason})."
            ) from None


def _url(base_url: str) -> str:
    try:
        return normalise_base_url(base_url)
    except RemoteError:
        return base_url.strip()


def _write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically, readable and writable by its owner only."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        os.chmod(path, 0o600)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
