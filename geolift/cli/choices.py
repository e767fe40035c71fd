"""Choices shared by several commands (typer shows them in --help and validates them)."""

from enum import Enum


class ProgressMode(str, Enum):
    bar = "bar"
    plain = "plain"
    none = "none"


class OutputType(str, Enum):
    float32 = "float32"
    int16 = "int16"


class Compression(str, Enum):
    deflate = "deflate"
    zstd = "zstd"
    none = "none"


class Overlap(str, Enum):
    keep = "keep"
    vnir = "vnir"
    swir = "swir"
