"""docs/cli.md holds the real --help of every command (regenerate with PUDM_REGEN_DOCS=1 pytest tests/test_docs.py)."""

import argparse
import os
from pathlib import Path

import pytest

from pudm_bench.cli import benchmark, evaluate, fid, latent, prior, report, sanity, splits, sweep, train

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
COMMANDS = {
    "python -m pudm_bench.sweep": sweep.build_parser,
    "python -m pudm_bench.benchmark": benchmark.build_parser,
    "python -m pudm_bench.report": report.build_parser,
    "python -m pudm_bench.train": train.build_parser,
    "python -m pudm_bench.prior": prior.build_parser,
    "python -m pudm_bench.evaluate": evaluate.build_parser,
    "python -m pudm_bench.sanity": sanity.build_parser,
    "python -m pudm_bench.splits": splits.build_parser,
    "python -m pudm_bench.fid": fid.build_parser,
    "python -m pudm_bench.latent": latent.build_parser,
}


def all_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser and its sub-commands' parsers (``splits list``, ``splits validate``), by name."""
    found = {"": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({f" {name}": sub for name, sub in action.choices.items()})
    return found


def render(monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help text to the terminal width
    parts = ["# Command-line reference", "",
             "Generated from each command's `--help` (tests/test_docs.py checks it is current).", ""]
    for name, build in COMMANDS.items():
        for suffix, parser in all_parsers(build()).items():
            parts += [f"## `{name}{suffix}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def test_cli_reference_is_current(monkeypatch):
    """Every option of every command, with its help text, is in docs/cli.md (whitespace-insensitive, so the
    check does not depend on how a Python version's argparse wraps lines)."""
    if os.environ.get("PUDM_REGEN_DOCS") == "1":
        CLI_DOC.write_text(render(monkeypatch))
    doc = " ".join(CLI_DOC.read_text().split())
    squeezed = "".join(doc.split())  # argparse also wraps at hyphens ("fid-helper-\npytorch")
    for name, build in COMMANDS.items():
        for suffix, parser in all_parsers(build()).items():
            assert f"`{name}{suffix}`" in doc, f"{name}{suffix} missing from docs/cli.md (regenerate it)"
            for action in parser._actions:
                for option in action.option_strings:
                    assert option in doc, f"{name}{suffix}: {option} missing from docs/cli.md (regenerate it)"
                if action.help and action.help != argparse.SUPPRESS:
                    help_text = "".join(parser._get_formatter()._expand_help(action).split())
                    assert help_text in squeezed, f"{name}{suffix}: help of {action.dest!r} changed (regenerate docs/cli.md)"


@pytest.mark.parametrize("doc", ["concepts.md", "splits.md", "cli.md", "metrics.md", "quickstart.md", "cluster.md",
                                 "large-models.md"])
def test_readme_links_exist(doc):
    assert (CLI_DOC.parent / doc).is_file()
    assert f"docs/{doc}" in (CLI_DOC.parents[1] / "README.md").read_text()
