"""Remote definitions: a committed `.expfs.toml` and a private `.expfs/config`.

Remotes in `.expfs.toml` at the repository root are meant to be committed,
so every clone knows the team's remotes (`expfs remote add --project`).
Remotes in `.expfs/config` (mode 0600), which Git ignores, are where `expfs
remote add` puts them by default, so adding a remote never changes the
user's working tree; they take precedence over a committed remote of the
same name. Both files have the same shape:

    [core]
    remote = "origin"            # the default remote

    [remote.origin]
    url = "s3://bucket/expfs"
    read_only = false

    [remote.origin.options]      # passed to the fsspec backend, as strings
    endpoint_url = "http://127.0.0.1:8333"

Secrets come from each backend's own environment variables and files (AWS
credentials, SSH keys and agents). A URL with a password is accepted only
in the private file, and every message shows URLs through `redact_url`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import tomli_w

from expfs.errors import UsageError
from expfs.store import layout

CONFIG_NAME = ".expfs.toml"
LOCAL_CONFIG_NAME = "config"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Option names whose values are never printed.
_SECRET_OPTION = re.compile(r"secret|password|passphrase|token|credential", re.I)


@dataclass(frozen=True)
class RemoteConfig:
    """One remote as configured: where it is and how to reach it."""

    name: str
    url: str
    read_only: bool = False
    options: dict[str, str] = field(default_factory=dict)
    local: bool = False

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def display_options(self) -> dict[str, str]:
        return {
            key: "***" if _SECRET_OPTION.search(key) else value
            for key, value in self.options.items()
        }


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def url_password(url: str) -> str | None:
    return urlsplit(url).password


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise UsageError(
            f"invalid remote name {name!r}: use up to 64 letters, digits, '_', "
            "'.' or '-', starting with a letter or digit"
        )


URL_FORMS = "an absolute path, file:///abs/path, s3://bucket/path or sftp://host/path"


def check_url(url: str) -> None:
    """Raise UsageError unless fsspec can open `url` as a remote's root.

    A file URL must name an absolute path: in `file://data/x`, `data`
    would be the host part, and fsspec would write to `x` relative to the
    current folder, inside the project.
    """
    redacted = redact_url(url)
    parts = urlsplit(url)
    if "://" not in url or not parts.scheme:
        example = ""
        if "://" not in url and ":" not in url:
            example = f" (such as {os.path.abspath(url)})"
        raise UsageError(f"invalid remote URL {redacted!r}: give {URL_FORMS}{example}")
    scheme = parts.scheme.lower()
    if scheme == "file":
        _check_file_url(url, parts.netloc, parts.path)
        return
    _check_protocol(redacted, scheme)
    if not parts.netloc:
        raise UsageError(
            f"invalid remote URL {redacted!r}: it names no "
            f"{'bucket' if scheme in ('s3', 's3a') else 'host'}: give {URL_FORMS}"
        )
    try:
        # Reading the port checks it: urlsplit raises ValueError when it is
        # not a number from 0 to 65535.
        _ = parts.port
    except ValueError:
        raise UsageError(
            f"invalid remote URL {redacted!r}: the port is not a number from 0 to "
            "65535: fix it or leave it out"
        ) from None


def _check_file_url(url: str, host: str, path: str) -> None:
    # fsspec reads even file://localhost/x as the relative path localhost/x.
    if host:
        raise UsageError(
            f"invalid remote URL {url!r}: a file URL needs an absolute path, and "
            f"here {host!r} would be read as a host name: write "
            f"file:///{host}{path} for the absolute path /{host}{path}, or give "
            "an absolute path"
        )
    if not path.startswith("/"):
        raise UsageError(
            f"invalid remote URL {url!r}: a file URL needs an absolute path "
            "(file:///abs/path)"
        )


def _check_protocol(redacted: str, scheme: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise UsageError(
            f"invalid remote URL {redacted!r}: fsspec knows no protocol {scheme!r}: "
            f"give {URL_FORMS}"
        ) from None
    except ImportError as exc:
        raise UsageError(
            f"remote URL {redacted!r} needs a package that is not installed: {exc}"
        ) from None


def check_jobs_option(name: str, options: dict[str, str], where: str = "") -> None:
    """Raise UsageError unless the `jobs` option, if set, is a count of 1 or more."""
    jobs = options.get("jobs", "1")
    if not (jobs.isdigit() and int(jobs) >= 1):
        raise UsageError(
            f"remote {name!r} {where}has invalid option jobs={jobs!r}: give a "
            "whole number of parallel transfers, 1 or more"
        )


class RemoteExists(UsageError):
    """`remote add` named a remote that a config file defines already."""


class ConfigFiles:
    """The two config files of one repository."""

    def __init__(self, repo_root: str, store_root: str) -> None:
        self.shared = os.path.join(repo_root, CONFIG_NAME)
        self.private = os.path.join(store_root, LOCAL_CONFIG_NAME)

    def path(self, local: bool) -> str:
        return self.private if local else self.shared

    def remotes(self) -> dict[str, RemoteConfig]:
        """Return every remote, private ones replacing shared ones by name."""
        found = _remotes_of(_read(self.shared), self.shared, local=False)
        found.update(_remotes_of(_read(self.private), self.private, local=True))
        return found

    def default_name(self) -> str | None:
        return self.default_setting()[1]

    def definitions(self, name: str) -> list[tuple[str, RemoteConfig]]:
        """Return each file that defines remote `name`, with its definition there."""
        found: list[tuple[str, RemoteConfig]] = []
        for path, local in ((self.shared, False), (self.private, True)):
            remote = _remotes_of(_read(path), path, local=local).get(name)
            if remote is not None:
                found.append((path, remote))
        return found

    def default_setting(self) -> tuple[str | None, str | None]:
        """Return the file that sets the default remote, and that remote's name.

        The private file's `[core] remote` wins over the committed one's.
        """
        for path in (self.private, self.shared):
            name = _read(path).get("core", {}).get("remote")
            if isinstance(name, str) and name:
                return path, name
        return None, None

    def add(self, remote: RemoteConfig, *, default: bool, force: bool = False) -> None:
        """Write `remote` to its file, replacing one of that name only with `force`.

        Raises `RemoteExists` when either file defines the name already,
        because a private remote hides a committed one of the same name.
        """
        check_name(remote.name)
        check_url(remote.url)
        check_jobs_option(remote.name, remote.options)
        if not remote.local and url_password(remote.url) is not None:
            raise UsageError(
                f"the URL of remote {remote.name!r} contains a password, and "
                f"{CONFIG_NAME} is meant to be committed: give the password "
                "through the backend's own environment variables or files, or "
                "add the remote with --local"
            )
        existing = self.definitions(remote.name)
        if existing and not force:
            raise RemoteExists(_exists_message(remote, existing))
        path = self.path(remote.local)
        data = _read(path)
        remotes = data.setdefault("remote", {})
        table: dict[str, object] = {"url": remote.url, "read_only": remote.read_only}
        if remote.options:
            table["options"] = dict(remote.options)
        remotes[remote.name] = table
        if default:
            data.setdefault("core", {})["remote"] = remote.name
        _write(path, data, private=remote.local)

    def remove(self, name: str) -> list[str]:
        """Remove `name` from both files; return the files it was in."""
        removed: list[str] = []
        for path, private in ((self.shared, False), (self.private, True)):
            data = _read(path)
            if name not in data.get("remote", {}):
                continue
            del data["remote"][name]
            if data.get("core", {}).get("remote") == name:
                del data["core"]["remote"]
            _write(path, data, private=private)
            removed.append(path)
        return removed


def _exists_message(
    remote: RemoteConfig, existing: list[tuple[str, RemoteConfig]]
) -> str:
    where = " and ".join(f"{path} with URL {old.display_url}" for path, old in existing)
    return (
        f"remote {remote.name!r} already exists in {where}: add it again with "
        "--force to replace it, choose another name, or remove it first with "
        f"`expfs remote remove {remote.name}`"
    )


def _read(path: str) -> dict[str, dict]:  # type: ignore[type-arg]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"invalid TOML in {path}: {exc}; fix or remove the file"
        ) from None


def _remotes_of(data: dict, path: str, *, local: bool) -> dict[str, RemoteConfig]:  # type: ignore[type-arg]
    found: dict[str, RemoteConfig] = {}
    for name, table in data.get("remote", {}).items():
        url = table.get("url") if isinstance(table, dict) else None
        if not isinstance(url, str):
            raise UsageError(f'remote {name!r} in {path} has no url: add `url = "..."`')
        options = {str(k): str(v) for k, v in table.get("options", {}).items()}
        check_jobs_option(name, options, f"in {path} ")
        read_only = bool(table.get("read_only", False))
        found[name] = RemoteConfig(name, url, read_only, options, local)
    return found


_HEADER = (
    "# expfs remotes (see `expfs remote --help`). Secrets belong in each\n"
    "# backend's own environment variables and files, never here.\n\n"
)


def _write(path: str, data: dict, *, private: bool) -> None:  # type: ignore[type-arg]
    temp = f"{path}.tmp{os.getpid()}"
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644
    )
    with os.fdopen(fd, "w") as f:
        f.write(_HEADER + tomli_w.dumps(data))
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, path)


def config_files(store_root: str) -> ConfigFiles:
    """Return the config files of the repository whose store is `store_root`."""
    repo_root = os.path.dirname(os.path.abspath(store_root))
    assert os.path.basename(store_root.rstrip("/")) == layout.STORE_DIRNAME
    return ConfigFiles(repo_root, store_root)
