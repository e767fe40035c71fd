"""``NAME=VALUE`` command-line options for a benchmark's fit (``--default-option``), shared by the scripts."""

from __future__ import annotations


def parse_options(pairs: list[str]) -> dict:
    """``["members=3", "distill=0.36"]`` -> ``{"members": 3, "distill": 0.36}``: numbers as int or float, true /
    false / none as Python's, anything else as text."""
    options = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        name = name.strip()
        try:
            options[name] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            options[name] = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return options
