"""Where a server is, in words and URLs: what the window needs without any network code.

A remote model's "path" is its URL, `<server>/v1/models/<model id>`: what
the settings, the history and the model list store for it. This module
imports nothing beyond the standard library, so the window can tell a
remote model from a file as it opens, before httpx or any server code loads.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, unquote, urlsplit

MODELS_PATH = "/v1/models/"


class RemoteError(Exception):
    """A server could not be asked, or did not answer as it should; the text is for a person."""

    @property
    def message(self) -> str:
        return str(self)


class BadAddressError(RemoteError):
    """What was typed is not an http or https address."""


def normalise_base_url(text: str) -> str:
    """The server's root from what a person typed: "gpu-box:8080/v1/" -> "http://gpu-box:8080".

    Raises BadAddressError when it is not an http(s) address with a host.
    """
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")].rstrip("/")
    try:
        parts = urlsplit(url)
        _ = parts.port  # urlsplit checks the port only when it is asked for it
    except ValueError as exc:
        raise BadAddressError(f"{text.strip()!r} is not a web address ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadAddressError(f"{text.strip()!r} is not an http:// or https:// address with a host")
    if parts.query or parts.fragment:
        raise BadAddressError(f"{text.strip()!r}: a server address has no ? or # part")
    return url


def is_this_machine(host: str) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def where(base_url: str) -> str:
    """host:port for messages, without any user name or password in the address."""
    parts = urlsplit(base_url)
    host = parts.hostname or base_url
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port is not None else host


def plain_http_key_warning(base_url: str, api_key: str | None) -> str:
    """A warning for a person when the key would cross the network unencrypted; "" otherwise."""
    if not api_key:
        return ""
    try:
        parts = urlsplit(normalise_base_url(base_url))
    except BadAddressError:
        return ""
    host = parts.hostname or ""
    if parts.scheme != "http" or is_this_machine(host):
        return ""
    return (
        f"The API key would go to {host} over plain http, unencrypted: anyone on the "
        "network between here and there can read it. Use an https:// address, or an "
        "SSH tunnel to the server."
    )


def is_remote(model_path: str) -> bool:
    """Whether a model "path" names a model on a server (its URL)."""
    return model_path.startswith(("http://", "https://")) and MODELS_PATH in model_path


def model_url(base_url: str, model_id: str) -> str:
    return f"{normalise_base_url(base_url)}{MODELS_PATH}{quote(model_id, safe='')}"


def split_model_url(url: str) -> tuple[str, str]:
    """The server's base URL and the model's id, from a remote model's URL."""
    base, _, model = url.partition(MODELS_PATH)
    return base, unquote(model)


def describe_remote(url: str) -> str:
    """ "Qwen3-32B on gpu-box:8080", for a person."""
    base, model = split_model_url(url)
    return f"{model} on {where(base)}"
