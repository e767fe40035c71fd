"""The default mode against the faithful preset in one run: the quality table (faithful preset vs default, every
case, mean) and the time and
memory figures, one after the other on the same machine (about 17 minutes on the 2-core VM).

Runs ``benchmarks/quality.py`` then ``benchmarks/scale.py``, each in its own process (so one's memory does not count
in the other's peak RSS), and prints both outputs as they come. ``--quick`` runs the short versions (quality's
4-band subset with one seed; scale at 1000 x 1000 without the full-scene part) to check the set-up in ~3 minutes.

    python benchmarks/default_vs_faithful.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short versions of both benchmarks")
    args = parser.parse_args(argv)
    quality = ["--quick"] if args.quick else ["--seeds", "3"]
    scale = ["--size", "1000", "--skip-training", "--skip-full-scene"] if args.quick else []
    status = 0
    for script, extra in (("quality.py", quality), ("scale.py", scale)):
        print(f"\n## python benchmarks/{script} {' '.join(extra)}".rstrip(), flush=True)
        status = subprocess.run([sys.executable, str(HERE / script), *extra]).returncode or status
    return status


if __name__ == "__main__":
    sys.exit(main())
