"""Tracking URIs: resolving, redacting and checking them, and the experiment-name rule."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from pudm_bench.errors import ConfigError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

# The running driver's tracking URI. Tune pickles its callbacks into the sweep's storage folder, and the sweep's
# MLflow callback leaves the URI (which may hold a password) out of that pickle; a restored callback reads this,
# which the driver sets before Tune runs. A module attribute, not a class attribute: the driver is often
# ``python -m pudm_bench.sweep`` (module __main__), whose classes Ray pickles by value.
ACTIVE_URI: str | None = None


def check_experiment_name(name: str, flag: str = "--experiment") -> str:
    """An MLflow experiment name that is safe as a folder name: with a SQLite store its artifacts go to
    ``<store>/mlruns/<name>``, so ``../``, a path separator or a space would put them outside the store or in a
    path that shells and artifact URIs mangle. The one rule for experiment names: the CLI checks it before any
    work, and ``SweepTracker`` again."""
    if not _NAME_RE.fullmatch(str(name)) or ".." in str(name):
        raise ConfigError(f"{flag}={name!r} is invalid: use letters, digits, '_', '-' or '.' (at most 128, starting "
                          "with a letter or digit), no spaces, no path separators and no '..'")
    return str(name)


def redact(uri: str | None) -> str:
    """``uri`` with passwords hidden: ``http://user:secret@host`` -> ``http://user:***@host``; query parameters
    that look like secrets (password, token, secret, key) get ``***`` too. Use it for every URI printed or logged."""
    if not uri:
        return str(uri)
    # String edits, not urlsplit/urlunsplit: those turn sqlite:////abs into sqlite://abs.
    text = str(uri)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)", text)
    if match and "@" in match.group(2):
        userinfo, host = match.group(2).rsplit("@", 1)  # the last @ ends the credentials (a password may hold @)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        text = match.group(1) + userinfo + "@" + host + text[match.end():]
    if "?" in text:
        head, query = text.split("?", 1)
        query = re.sub(r"(?i)((?:^|&)[^=&]*(?:password|passwd|pwd|token|secret|key)[^=&]*=)[^&#]*", r"\1***", query)
        text = f"{head}?{query}"
    return text


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use, always absolute for local stores.

    - None: ``$MLFLOW_TRACKING_URI`` when set (resolved by these same rules), else MLflow 3's default store,
      ``sqlite:///<absolute cwd>/mlflow.db``;
    - a filesystem path ending in .db/.sqlite/.sqlite3 -> ``sqlite:///<absolute path>``; a relative
      ``sqlite:///x.db`` is made absolute, so a sweep resumed from another folder finds its store;
    - http(s) and database URIs (postgresql://, mysql://, ...) are kept as they are;
    - a folder or ``file:`` URI (MLflow's file store) is refused unless ``MLFLOW_ALLOW_FILE_STORE=true``, as
      MLflow 3 itself refuses it.
    """
    if uri is None:
        env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        return resolve_tracking_uri(env) if env else sqlite_uri(Path.cwd() / "mlflow.db")
    uri = str(uri).strip()
    if not uri:
        raise ConfigError("--mlflow-uri is empty: pass a .db path, sqlite:///PATH or http(s)://HOST:PORT")
    scheme = urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith(("file:", "sqlite:")) else ""
    if scheme in ("http", "https"):
        if not urlsplit(uri).hostname:
            raise ConfigError(f"--mlflow-uri={redact(uri)!r} has no host: pass e.g. http://127.0.0.1:5000")
        return uri
    if scheme == "sqlite":
        return sqlite_uri(sqlite_path(uri))
    if scheme == "file" or (not scheme and not uri.lower().endswith(_SQLITE_SUFFIXES)):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            path = Path(unquote(urlsplit(uri).path) if scheme == "file" else uri).expanduser().resolve()
            return path.as_uri()
        raise ConfigError(f"--mlflow-uri={redact(uri)!r} is a file store, which MLflow 3 refuses: pass a .db path "
                          "(SQLite), sqlite:///PATH or http(s)://HOST:PORT (or set MLFLOW_ALLOW_FILE_STORE=true)")
    if scheme:
        return uri  # postgresql://, mysql://, databricks, ...: MLflow resolves these
    return sqlite_uri(Path(uri))


def sqlite_uri(path: Path) -> str:
    return "sqlite:///" + str(Path(path).expanduser().resolve())


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (query string dropped); in-memory databases are refused."""
    rest = uri.split("://", 1)[1] if "://" in uri else uri.split(":", 1)[1]
    rest = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db -> rel.db, sqlite:////abs -> /abs
    path = unquote(rest.split("?", 1)[0])
    if not path or path == ":memory:":
        raise ConfigError(f"--mlflow-uri={uri!r} is an in-memory database, which no other process can read: "
                          "pass sqlite:///PATH/mlflow.db")
    return Path(path).expanduser().resolve()


def check_tracking_reachable(uri: str, timeout_s: float = 5) -> None:
    """Fail fast, before any training, when the store cannot be used.

    http(s): GET ``<uri>/health`` with a short timeout; no answer -> ConfigError naming the (redacted) URI.
    sqlite: the database file, or the nearest existing folder above it, must be writable. Other schemes: MLflow
    must know them (its client is built, which connects to a database store).
    """
    uri = resolve_tracking_uri(uri)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials are not needed for /health
        health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:  # noqa: S310 (http(s) only)
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ConfigError(f"MLflow tracking server {redact(uri)} is unreachable ({reason}); start it or pass "
                              "--mlflow-uri") from None
        if status >= 500:
            raise ConfigError(f"MLflow tracking server {redact(uri)} is unreachable (HTTP {status} from /health); "
                              "start it or pass --mlflow-uri")
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path.exists():
            if path.is_dir() or not os.access(path, os.W_OK):
                raise ConfigError(f"MLflow store {path} is not a writable file; pass --mlflow-uri with another path")
            return
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot create the MLflow store {path}: {folder} is not a writable folder; pass "
                              "--mlflow-uri with another path")
    elif scheme != "file":
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            MlflowClient(tracking_uri=uri)
        except MlflowException as exc:
            known = re.search(r"Supported URI schemes are: \[([^\]]*)\]", str(exc))
            raise ConfigError(f"--mlflow-uri={redact(uri)!r}: MLflow cannot use it as a tracking store"
                              + (f" (schemes it knows: {known.group(1)})" if known else "")
                              + "; pass a .db path, sqlite:///PATH or http(s)://HOST:PORT") from None


def check_store_exists(uri: str) -> None:
    """Readers must not create an empty store as a side effect of a typo."""
    if urlsplit(uri).scheme.lower() == "sqlite":
        path = sqlite_path(uri)
        if not path.is_file():
            raise ConfigError(f"no MLflow store at {path}: run a sweep first, or pass --mlflow-uri")
    else:
        check_tracking_reachable(uri)
