"""Nix's store URL syntax: which store `--store`, `--from` and `--to` name.

The forms, as Nix reads them (store-api.cc `openStore`, `splitUriAndParams`; store-reference.cc):

- nothing, `auto` or `local`: the default local store; `local?root=DIR` a local store rooted at DIR;
- a path (anything without `://` that contains a `/`, such as `/mnt/root` or `./root`): a local store
  rooted there, made absolute;
- `file://DIR`, `http://HOST[:PORT][/PATH]`, `https://...`, `s3://BUCKET`: binary caches;
- `ssh://[USER@]HOST` (`nix-store --serve`), `ssh-ng://[USER@]HOST` (`nix-daemon --stdio`),
  `unix:///PATH/TO/SOCKET` and `daemon`: remote stores.

Parameters follow a `?` as `name=value` pairs joined by `&`, percent-decoded. A bare word is not a path
(`store` could be a typo of any of the above), so it is refused rather than taken for a directory in the
current one. Parsing is pure: nothing is opened or created here.
"""

from __future__ import annotations

import os
import urllib.parse

from xstore.errors import InvalidStoreUrlError
from xstore.records import FrozenRecord, setfield

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Final

SCHEMES: Final = ("local", "file", "http", "https", "s3", "ssh", "ssh-ng", "unix", "daemon")


class StoreUrl(FrozenRecord):
    """A parsed store URL. `scheme` is one of `SCHEMES`; `authority` the host (with user and port) or
    bucket; `path` the local root, cache directory, socket or URL path; `params` the query."""

    __slots__ = ("scheme", "authority", "path", "params", "text")  # noqa: RUF023 (the fields' order)
    scheme: str
    authority: str
    path: str
    params: dict[str, str]
    text: str

    def __init__(
        self,
        scheme: str,
        authority: str = "",
        path: str = "",
        params: dict[str, str] | None = None,
        text: str = "",
    ) -> None:
        setfield(self, "scheme", scheme)
        setfield(self, "authority", authority)
        setfield(self, "path", path)
        setfield(self, "params", {} if params is None else params)
        setfield(self, "text", text)

    @property
    def is_default_local(self) -> bool:
        return self.scheme == "local" and not self.path

    def param(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean parameter as Nix reads them: `true`/`1` and `false`/`0`."""
        value = self.params.get(name)
        if value is None:
            return default
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise InvalidStoreUrlError(
            f"store URL '{self.text}': parameter '{name}' must be true or false, not '{value}'"
        )

    def integer(self, name: str, default: int) -> int:
        value = self.params.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise InvalidStoreUrlError(
                f"store URL '{self.text}': parameter '{name}' must be a whole number, not '{value}'"
            ) from None

    def base(self) -> str:
        """The URL without its parameters (what Nix shows as the store's name)."""
        if self.scheme in ("local", "daemon") and not self.path:
            return self.scheme
        if self.scheme == "local":
            return self.path
        if self.scheme in ("file", "unix"):
            return f"{self.scheme}://{self.path}"
        return f"{self.scheme}://{self.authority}{self.path}"


def _parse_params(text: str, query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not query:
        return params
    for item in query.split("&"):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidStoreUrlError(f"store URL '{text}': parameter '{item}' is not name=value")
        params[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
    return params


def parse_store_url(text: str | None) -> StoreUrl:
    """Parse `text` (None or empty: the default local store). Raises `InvalidStoreUrlError` naming what
    is wrong: an unknown scheme, a missing host or bucket, a malformed parameter, a bare word."""
    if text is None or text in ("", "auto"):
        return StoreUrl("local", text=text or "")
    if "\0" in text or "\n" in text:
        raise InvalidStoreUrlError(f"store URL {text!r} contains a control character")
    base, _, query = text.partition("?")
    params = _parse_params(text, query)
    if base in ("local", "auto"):
        root = params.pop("root", "")
        return StoreUrl("local", path=os.path.abspath(root) if root else "", params=params, text=text)
    if base == "daemon":
        return StoreUrl("daemon", params=params, text=text)
    scheme, sep, rest = base.partition("://")
    if not sep:
        if "/" in base:
            return StoreUrl("local", path=os.path.abspath(base), params=params, text=text)
        raise InvalidStoreUrlError(
            f"'{text}' is not a store URL: a directory needs a '/' (such as './{text}'), other stores a "
            f"scheme ({', '.join(s + '://' for s in SCHEMES if s not in ('local', 'daemon'))}, 'daemon')"
        )
    scheme = scheme.lower()
    if scheme not in SCHEMES or scheme in ("local", "daemon"):
        raise InvalidStoreUrlError(f"unsupported store URL scheme '{scheme}://' in '{text}'")
    if scheme in ("file", "unix"):
        if not rest:
            raise InvalidStoreUrlError(f"store URL '{text}' names no path")
        path = urllib.parse.unquote(rest)
        return StoreUrl(scheme, path=os.path.abspath(path), params=params, text=text)
    authority, slash, path = rest.partition("/")
    path = slash + path if slash else ""
    if not authority:
        what = "bucket" if scheme == "s3" else "host"
        raise InvalidStoreUrlError(f"store URL '{text}' names no {what}")
    if scheme in ("s3", "ssh", "ssh-ng") and path.strip("/"):
        raise InvalidStoreUrlError(f"store URL '{text}': a {scheme}:// store takes no path ('{path}')")
    if scheme in ("http", "https"):
        try:
            parsed = urllib.parse.urlsplit(f"{scheme}://{authority}")
            _ = parsed.port  # a port that is not a number raises here
        except ValueError as e:
            raise InvalidStoreUrlError(f"store URL '{text}': {e}") from None
        if not parsed.hostname:
            raise InvalidStoreUrlError(f"store URL '{text}' names no host")
        path = path.rstrip("/")
    elif scheme != "s3":
        path = ""
    return StoreUrl(scheme, authority=authority, path=path, params=params, text=text)
