"""Errors users see, each one line naming the problem and the fix.

Every check that rejects user input (a CLI flag, a split or search-space YAML, missing data) raises one of these;
the CLIs print ``error: <message>`` and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, Iterable


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the suite's error format: a bad flag (unknown choice, not a number) is one line,
    ``error: <what argparse says>; see <prog> --help``, exit status 2, without the usage block first."""

    def error(self, message: str):  # type: ignore[override]
        import re

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:  # Python 3.11's argparse lists the choices but does not suggest one
            message += did_you_mean(choice.group(1), [c.strip(" '") for c in choice.group(2).split(",")])
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


class PudmError(Exception):
    """Base class for errors caused by user input or the user's environment (not bugs)."""


class ConfigError(PudmError, ValueError):
    """A config, split or CLI value is invalid."""


class DataNotFoundError(PudmError, FileNotFoundError):
    """A dataset's files are not where we looked."""


class DataCorruptError(PudmError, ValueError):
    """A dataset's files are where we looked but cannot be read (truncated, overwritten, another format)."""


class NonFiniteLossError(PudmError, FloatingPointError):
    """Training produced a NaN or infinite loss; the run stops instead of writing a broken model."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, value: str, allowed: Iterable[str], where: str = "") -> ConfigError:
    """A ConfigError for a name not among ``allowed``, listing them and suggesting the closest one."""
    allowed = sorted(str(a) for a in allowed)
    prefix = f"{where}: " if where else ""
    return ConfigError(
        f"{prefix}unknown {kind} {value!r}{did_you_mean(value, allowed)}; allowed: {', '.join(allowed)}"
    )


def check_keys(mapping: dict, allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> None:
    """Reject keys not in ``allowed`` (with a suggestion) and report missing ``required`` keys."""
    allowed = list(allowed)
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            raise unknown_name("key", key, allowed, where)
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")


def read_yaml(path: str | Path, what: str, missing_hint: str = "") -> Any:
    """``yaml.safe_load`` of a user file (no arbitrary objects), with one-line errors for a missing file and for
    malformed YAML (naming the line)."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist{missing_hint}") from None
    except yaml.constructor.ConstructorError as exc:  # e.g. !!python/object/apply: safe_load builds no objects
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path}: a YAML tag{at} asks to build a Python object, which is never done; "
                          "write plain values (numbers, text, lists, mappings)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path}: malformed YAML{at}; fix the syntax (check indentation and colons)") from None
