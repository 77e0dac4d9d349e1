"""Shared by the benchmark scripts: rewrite one `## ...` section of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def update_section(heading: str, section: str, results: Path = RESULTS) -> None:
    """Replace the section that starts with `heading` (a `## ...` line) by `section`, or append it."""
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("\n## ", start + len(heading))
        rest = old[end + 1 :] if end >= 0 else ""
        new = old[:start] + section + ("\n" + rest if rest else "")
    results.write_text(new)


def publish(heading: str, text: str, update: bool, results: Path = RESULTS) -> None:
    """Print a benchmark's section; with ``update`` also write it into RESULTS.md (:func:`update_section`)."""
    print(text)
    if update:
        update_section(heading, text, results)
