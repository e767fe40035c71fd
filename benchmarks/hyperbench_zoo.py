"""geolift's default preset against the faithful one inside HyperBench's own pipeline (one command, one machine).

HyperBench (PyPI ``hyperbench`` 0.1.0, MIT, by the SpectraLift authors) builds synthetic fusion cases from a
hyperspectral scene - percentile normalisation, blur with one of ten PSF families (zero-padded at the borders),
``cv2.INTER_AREA`` downsampling, Gaussian SRFs, noise at a given SNR - runs a method through an adapter and scores it
with its own metrics.
``benchmarks/psf_zoo.py`` re-implements only its PSF formulas; this script runs HyperBench itself, so the cases,
SRFs, noise and metrics are HyperBench's, and geolift only supplies the fusion callable
(``hyperbench.CallableAdapter``). Nothing of HyperBench's code is copied here: the script only calls its API
(``BenchmarkConfig``, ``DegradationSpec``, ``CallableAdapter``, ``run_benchmark``, ``BenchmarkResults``).

What it measures: for HyperBench's ten PSF families (``hyperbench.AVAILABLE_PSFS``, its default width
``sigma`` 3.4 HR px on a 15 x 15 kernel, radius 7) at ratios 4 and 8 with 4 and 8 MSI bands (40 cases), the PSNR
and SAM that HyperBench reports for ``SpectraLift(preset="spectralift")`` (the paper's recipe) and for
``SpectraLift()`` (geolift's default, whose ``predict`` also runs the consistency step against the LR-HSI), each
fitted on the case's LR-HSI and the SRF matrix HyperBench used, and predicting from the HR-MSI at the case's ratio.
The issue's target: the default never more than 0.1 dB below the faithful preset; the summary counts the cases that
are.

The scene is geolift's bundled EnMAP L2A Potsdam cube (64 x 128 px, the 218 bands with bbl != 0, sorted by
wavelength, as ``tests/helpers.py::read_potsdam_cube`` reads it), handed to HyperBench as a ``.mat`` file (the only
format its loader reads). MSI bands: by default HyperBench's built-in ones (``--srf hyperbench``): 4 = IKONOS
B/G/R/NIR, 8 = WorldView-2, Gaussian SRFs (band width / ``fwhm_factor`` 4.2 as the standard deviation) on a
wavelength grid HyperBench generates itself - ``linspace`` from the lowest to the highest band edge (421-893 nm for 4
bands, 396-1043 nm for 8) over the scene's band count, whatever the scene's real wavelengths; that is its protocol
for any scene. ``--srf sentinel2a`` instead passes geolift's Sentinel-2A responses on the cube's real wavelengths
and FWHM as HyperBench's ``user_srf`` (B2, B3, B4, B8 / B2-B8A). Noise: HyperBench's spatial SNR 35 dB (its default,
which it maps to ratio 4 only; used for ratio 8 too) and spectral SNR 40 dB, noise seed 42 (its default), so both
presets see identical cases. Metrics: HyperBench's six (RMSE, PSNR, SSIM, UIQI, ERGAS, SAM) after its clip to
[0, 1]; PSNR is computed by HyperBench on 8-bit quantised images, SAM in degrees.

Environment: HyperBench pins ``numpy==1.26.4`` (and ``opencv-python==4.9.0.80``), so it gets its own virtual
environment, made once with its own pip under ``~/.cache/geolift-bench/hyperbench-venv`` (``--venv DIR``):
``numpy==1.26.4``, ``torch==2.13.0`` (the CPU wheel; unpinned, pip may pull a CUDA build), ``hyperbench==0.1.0``
with all its declared requirements (jupyterlab and ipykernel included; they install) and geolift from this
repository, non-editable, built from a temporary copy of its sources (a build in place would write ``build/`` and
``*.egg-info`` into the repository). geolift is reinstalled there (``--no-deps``) whenever its sources change, so
the run always measures the working tree. The script then re-runs itself with ``--worker`` in that environment.

    python benchmarks/hyperbench_zoo.py [--quick] [--seeds 0 1 2] [--steps N] [--jobs 2] [--srf hyperbench]
    python benchmarks/hyperbench_zoo.py --members 1 --default-steps 1250 --default-option brightness_jitter=0.25
        # stop 28-29's default: one network

Training steps: each preset's own (the faithful 2500, the default 833 per member) unless ``--steps`` sets both or
``--default-steps`` the default's.

``--quick``: 6 cases (gaussian, sinc, gabor at ratios 4 and 8, 4 bands), seed 0, 300 steps - a set-up check.
Results: a table per case (means over the seeds), a summary, and HyperBench's own CSV rows under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from options import parse_options  # benchmarks/options.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "geolift-bench" / "hyperbench-venv"
DEFAULT_RUNS = Path.home() / ".cache" / "geolift-bench" / "hyperbench-runs"
PINS = ("numpy==1.26.4", "torch==2.13.0", "hyperbench==0.1.0")
GEOLIFT_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "geolift", "srf_library")
READY_MARK = "geolift-bench-ready"
STAMP = "geolift-source.sha256"

PRESETS = {"faithful": "spectralift", "default": None}  # None: SpectraLift()'s own default preset
QUICK_FAMILIES = ("gaussian", "sinc", "gabor")
SENTINEL2_BANDS = {4: ("B2", "B3", "B4", "B8"), 8: ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A")}
REFUSED = "Consistency step skipped"


# --------------------------------------------------------------------------- environment (system python)
def source_digest() -> str:
    """SHA-256 over geolift's installable sources, to tell when the venv's copy is stale."""
    digest = hashlib.sha256()
    for name in GEOLIFT_SOURCES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def copy_geolift_sources(destination: Path) -> Path:
    """Copy what a geolift build needs into ``destination`` (so pip's build writes nothing into the repo)."""
    for name in GEOLIFT_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def pip(python: Path, *args: str) -> None:
    """Run the venv's own pip; a failure stops the script with pip's output above."""
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def ensure_venv(venv_dir: Path) -> Path:
    """Create (once) the HyperBench venv and keep its geolift in step with the repository; returns its python."""
    python = venv_dir / "bin" / "python"
    digest = source_digest()
    if not (venv_dir / READY_MARK).exists():
        if venv_dir.exists() and any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").exists():
            raise SystemExit(f"{venv_dir} exists and is not a virtual environment; give another --venv.")
        print(f"Building the HyperBench environment in {venv_dir} (once; a few minutes) ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=venv_dir.exists()).create(venv_dir)  # clears a half-built one
        with tempfile.TemporaryDirectory(prefix="geolift-src-") as tmp:
            pip(python, *PINS, str(copy_geolift_sources(Path(tmp))))
        (venv_dir / STAMP).write_text(digest)
        (venv_dir / READY_MARK).write_text(" ".join(PINS) + "\n")
    elif (venv_dir / STAMP).read_text().strip() != digest:
        print("geolift's sources changed since the venv's copy was installed; reinstalling it (--no-deps).", flush=True)
        with tempfile.TemporaryDirectory(prefix="geolift-src-") as tmp:
            pip(python, "--no-deps", "--force-reinstall", str(copy_geolift_sources(Path(tmp))))
        (venv_dir / STAMP).write_text(digest)
    return python


def launch_worker(python: Path, argv: list[str]) -> int:
    """Re-run this script with ``--worker`` under the venv's python, one BLAS/OpenMP thread per process."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    env.pop("PYTHONPATH", None)  # the venv's packages only, not the system's numpy 2
    return subprocess.call([str(python), str(Path(__file__).resolve()), "--worker", *argv], env=env)


# --------------------------------------------------------------------------- worker (venv python)
def machine_facts() -> list[str]:
    """CPU model, cores and library versions, for the record."""
    import hyperbench
    import numpy as np
    import torch

    import geolift

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return [f"CPU: {model}; {os.cpu_count()} logical cores, {usable} usable",
            f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
            f"hyperbench {hyperbench.__version__}, geolift {geolift.__version__} (repo HEAD {commit}, "
            f"sources sha256 {source_digest()[:12]})"]


def write_scene(run_dir: Path):
    """The Potsdam cube as HyperBench's loader wants it ((H, W, B) in a .mat); returns path, wavelengths, FWHM."""
    import numpy as np
    from scipy.io import savemat

    sys.path.insert(0, str(REPO / "tests"))
    from helpers import read_potsdam_cube

    cube, wavelengths, fwhm, _, _ = read_potsdam_cube()
    if not np.all(np.isfinite(cube)):
        raise SystemExit("The Potsdam cube has nodata pixels; HyperBench needs a finite scene.")
    path = run_dir / "potsdam_enmap_218b.mat"
    savemat(path, {"hsi": np.ascontiguousarray(cube.transpose(1, 2, 0))})
    return path, wavelengths, fwhm


class GeoliftFusion:
    """The callable HyperBench's ``CallableAdapter`` runs: fit SpectraLift on (LR-HSI, SRF), predict the HR-MSI.

    HyperBench hands over (H, W, bands) arrays and its SRF matrix (MSI bands x HSI bands, rows summing to 1); the
    PSF it also hands over is not used (SpectraLift needs none), nor ``value_range``: geolift scales by the LR-HSI's
    own range, as a user's call would. Returns the prediction and per-case stats (fit time; whether the default's
    consistency step was applied or refused by its blur-model check) that HyperBench writes into its CSV row.
    """

    def __init__(self, preset: str | None, seed: int, steps: int | None, members: int = 1,
                 batched_members: int | None = None,
                 options: dict | None = None):
        """``members``: separate fits averaged (``--ensemble``); ``batched_members``: SpectraLift's ``members``,
        one fit of that many networks side by side (``--members``)."""
        self.preset, self.seed, self.steps, self.members = preset, seed, steps, members
        self.batched_members = batched_members
        self.options = dict(options or {})

    def __call__(self, lr_hsi, hr_msi, srf=None, psf=None, metadata=None):
        import warnings

        import numpy as np

        from geolift import SpectraLift

        ratio = int(metadata["downsample_ratio"])
        fits, seconds = [], 0.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lr = np.ascontiguousarray(lr_hsi.transpose(2, 0, 1))
            msi = np.ascontiguousarray(hr_msi.transpose(2, 0, 1))
            R = np.asarray(srf, dtype=np.float64)
            given = {} if self.batched_members is None else {"members": self.batched_members}
            for member in range(self.members):  # --ensemble: the average of independent fits (a probe)
                model = SpectraLift(preset=self.preset, seed=self.seed + 1000 * member, steps=self.steps,
                                    num_threads=1, **given, **self.options)
                # hr_msi in fit: the default's student network trains there, inside the timed fit
                model.fit(lr, R, hr_msi=msi)
                fits.append(model.predict(msi, ratio=ratio))
                seconds += model.fit_seconds
        fused = fits[0] if len(fits) == 1 else np.mean(fits, axis=0, dtype=np.float64).astype(np.float32)
        if not model.consistency:
            step = "none"
        else:
            step = "refused" if any(REFUSED in str(w.message) for w in caught) else "applied"
        return fused.transpose(1, 2, 0), {"geolift_fit_seconds": seconds, "consistency_step": step}


def earlier_faithful_rows(path: Path, seeds: list[int]) -> list[dict]:
    """The faithful preset's rows of an earlier run's ``all_rows.csv`` for ``seeds`` (``--reuse-faithful``)."""
    import csv

    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f)
                if row.get("preset") == "faithful" and int(row["geolift_seed"]) in seeds]
    if not rows:
        raise SystemExit(f"{path} has no faithful rows for seeds {seeds}.")
    for row in rows:
        row["downsampling_ratio"], row["msi_band_count"] = int(row["downsampling_ratio"]), int(row["msi_band_count"])
    return rows


def run_unit(unit: dict) -> list[dict]:
    """One HyperBench run (one preset, one geolift seed, one MSI band count over every PSF family and ratio)."""
    import logging

    import hyperbench as hb
    import numpy as np
    import torch

    torch.set_num_threads(1)
    user_srf = None
    if unit["srf"] == "sentinel2a":
        from geolift import srf

        user_srf = srf.response_matrix("sentinel2a", list(SENTINEL2_BANDS[unit["bands"]]),
                                       np.asarray(unit["wavelengths"]), fwhm_nm=np.asarray(unit["fwhm"]))
    name = f"{unit['label']}_seed{unit['seed']}_{unit['bands']}b"
    config = hb.BenchmarkConfig(
        scene_path=unit["scene"], scene_key="hsi",
        psf_names=list(unit["families"]), psf_sigmas=[unit["sigma"]], psf_kernel_radii=[unit["radius"]],
        degradation_specs=[hb.DegradationSpec(downsample_ratio=r, msi_band_count=unit["bands"],
                                              spatial_snr_db=unit["snr"], spectral_snr_db=unit["spectral_snr"])
                           for r in unit["ratios"]],
        seed=unit["hb_seed"], user_srf=user_srf,
        output_csv_path=str(Path(unit["run_dir"]) / f"{name}.csv"),
    )
    members = unit["ensemble"] if unit["label"] == "default" else 1
    batched = unit["members"] if unit["label"] == "default" else None  # None: the preset's
    steps = unit["default_steps"] if unit["label"] == "default" else unit["steps"]
    options = unit["default_options"] if unit["label"] == "default" else {}
    adapter = hb.CallableAdapter(GeoliftFusion(PRESETS[unit["label"]], unit["seed"], steps, members, batched, options),
                                 name=f"geolift-{unit['label']}")
    results = hb.run_benchmark(adapter, config, log_level=logging.WARNING)
    return [dict(row, preset=unit["label"], geolift_seed=unit["seed"]) for row in results.rows]


def summarise(rows: list[dict], families: list[str]) -> tuple[list[str], int]:
    """The per-case table and the summary lines; also the number of failed HyperBench cases."""
    import numpy as np

    failed = [row for row in rows if row.get("status") != "success"]
    cases: dict[tuple, dict] = {}
    for row in rows:
        if row.get("status") != "success":
            continue
        key = (row["downsampling_ratio"], row["msi_band_count"], row["psf_name"])
        entry = cases.setdefault(key, {"faithful": [], "default": [], "steps": set()})
        entry[row["preset"]].append((float(row["PSNR"]), float(row["SAM"])))
        if row["preset"] == "default":
            entry["steps"].add(row["consistency_step"])

    lines = [f"{'ratio':>5} {'bands':>5}  {'PSF':<12}{'PSNR faith':>11}{'PSNR def':>9}{'d - f':>7}"
             f"{'SAM faith':>10}{'SAM def':>8}  consistency step"]
    diffs, sam_diffs, sam_changes, labels = [], [], [], []
    order = {name: i for i, name in enumerate(families)}
    for key in sorted(cases, key=lambda k: (k[1], k[0], order.get(k[2], 99))):
        entry = cases[key]
        if not entry["faithful"] or not entry["default"]:
            continue
        (pf, sf), (pd, sd) = (np.mean(entry[p], axis=0) for p in ("faithful", "default"))
        diffs.append(pd - pf)
        sam_diffs.append(sd - sf)
        sam_changes.append(100.0 * (sd / sf - 1.0))
        labels.append(key)
        lines.append(f"{key[0]:>5} {key[1]:>5}  {key[2]:<12}{pf:>11.2f}{pd:>9.2f}{pd - pf:>+7.2f}{sf:>10.2f}{sd:>8.2f}"
                     f"  {'/'.join(sorted(entry['steps']))}")
    if diffs:
        diffs_arr = np.array(diffs)
        worst = int(np.argmin(diffs_arr))
        lines += ["", f"{len(diffs)} cases; mean default - faithful PSNR {diffs_arr.mean():+.3f} dB; worst "
                      f"{diffs_arr[worst]:+.3f} dB (ratio {labels[worst][0]}, {labels[worst][1]} bands, "
                      f"{labels[worst][2]}); cases below -0.1 dB: {int((diffs_arr < -0.1).sum())}"]
        lines.append(f"mean default - faithful SAM {np.mean(sam_diffs):+.3f} deg (negative: default better)")
        for position, what in ((0, "ratio"), (1, "bands"), (2, "PSF family")):
            means: dict = {}
            for key, d in zip(labels, diffs):
                means.setdefault(key[position], []).append(d)
            ordered = sorted(means.items(), key=lambda item: order.get(item[0], item[0]) if position == 2 else item[0])
            lines.append(f"mean default - faithful PSNR by {what}: "
                         + ", ".join(f"{k}: {np.mean(v):+.3f} dB" for k, v in ordered))
        lines += targets(rows, diffs_arr, float(np.mean(sam_changes)))
    for row in failed:
        lines.append(f"FAILED {row.get('preset')} seed {row.get('geolift_seed')} ratio {row.get('downsampling_ratio')}"
                     f" bands {row.get('msi_band_count')} {row.get('psf_name')}: {row.get('error')}")
    return lines, len(failed)


def targets(rows: list[dict], diffs, mean_sam_change: float) -> list[str]:
    """Issue 16's targets on the zoo, each with its verdict: mean PSNR gain >= +1.5 dB, SAM (the mean of the
    per-case relative changes) >= 15 % lower, no case below -0.1 dB, the default's training <= 2 x the faithful
    preset's (HyperBench's CSV keeps each fit's time as ``geolift_fit_seconds``)."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    fit = {label: sum(float(r["geolift_fit_seconds"]) for r in rows
                      if r.get("status") == "success" and r["preset"] == label) for label in PRESETS}
    ratio = fit["default"] / fit["faithful"] if fit["faithful"] > 0 else float("nan")
    return [f"targets: mean dPSNR {diffs.mean():+.2f} dB (>= +1.50: {verdict(diffs.mean() >= 1.5)}); "
            f"mean dSAM {mean_sam_change:+.1f} % (<= -15 %: {verdict(mean_sam_change <= -15.0)}); "
            f"worst {diffs.min():+.2f} dB (>= -0.10: {verdict(diffs.min() >= -0.1)})",
            f"training summed over the fits: faithful {fit['faithful']:.0f} s, default {fit['default']:.0f} s "
            f"({ratio:.2f} x; <= 2 x: {verdict(ratio <= 2.0)})"]


def worker_main(args: argparse.Namespace) -> int:
    """Inside the venv: write the scene, run every (preset, seed, band count) through HyperBench, print the table."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import hyperbench as hb

    started = time.perf_counter()
    for line in machine_facts():
        print(line)
    run_dir = Path(args.out) if args.out else DEFAULT_RUNS / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    scene, wavelengths, fwhm = write_scene(run_dir)
    families = list(args.families or (QUICK_FAMILIES if args.quick else hb.AVAILABLE_PSFS))
    unknown = sorted(set(families) - set(hb.AVAILABLE_PSFS))
    if unknown:
        raise SystemExit(f"Unknown PSF families {unknown}; HyperBench has {sorted(hb.AVAILABLE_PSFS)}.")
    units = [dict(label=label, seed=seed, bands=bands, families=families, ratios=args.ratios, sigma=args.sigma,
                  radius=args.radius, snr=args.snr, spectral_snr=args.spectral_snr, hb_seed=args.hb_seed,
                  steps=args.steps, srf=args.srf, scene=str(scene), run_dir=str(run_dir),
                  wavelengths=wavelengths.tolist(), fwhm=fwhm.tolist(), ensemble=args.ensemble,
                  members=args.members, default_steps=args.default_steps,
                  default_options=parse_options(args.default_option))
             for bands in args.bands for seed in args.seeds for label in PRESETS
             if not (args.reuse_faithful and label == "faithful")]
    n_cases = len(families) * len(args.ratios) * len(args.bands)
    print(f"HyperBench cases: {n_cases} ({len(families)} PSF families {', '.join(families)}; sigma {args.sigma:g} HR "
          f"px, kernel {2 * args.radius + 1} x {2 * args.radius + 1}; ratios {args.ratios}; MSI bands {args.bands}, "
          f"SRF {args.srf}; SNR {args.snr:g} dB spatial, {args.spectral_snr:g} dB spectral, noise seed "
          f"{args.hb_seed}); geolift seeds {args.seeds}, steps: faithful {args.steps or 'its preset'}, default "
          f"{args.default_steps or 'its preset'}"
          f"{f', default = average of {args.ensemble} fits' if args.ensemble > 1 else ''}"
          f"{f', default with members={args.members}' if args.members is not None else ''}"
          f"{f', default options {args.default_option}' if args.default_option else ''}; "
          f"{len(units)} HyperBench runs on "
          f"{args.jobs} process(es); output in {run_dir}", flush=True)

    rows: list[dict] = []
    context = multiprocessing.get_context("spawn")  # no fork after torch's thread pools exist
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        for unit, unit_rows in zip(units, pool.map(run_unit, units)):
            rows.extend(unit_rows)
            print(f"  done: {unit['label']} seed {unit['seed']} {unit['bands']} bands "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    hb.BenchmarkResults(rows=rows).to_csv(run_dir / "all_rows.csv")
    if args.reuse_faithful:
        rows.extend(earlier_faithful_rows(args.reuse_faithful, args.seeds))
        print(f"faithful rows taken from {args.reuse_faithful}")

    lines, n_failed = summarise(rows, families)
    print()
    print("\n".join(lines))
    print(f"\nTotal time {time.perf_counter() - started:.0f} s; HyperBench rows in {run_dir / 'all_rows.csv'}")
    return 1 if n_failed else 0


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (the same for the outer call and the ``--worker`` call)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 cases, 1 seed, 300 steps: a set-up check")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="geolift seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of every fit (default: each preset's own, 2500 and 833)")
    parser.add_argument("--jobs", type=int, default=2, help="HyperBench runs in parallel (one core each)")
    parser.add_argument("--srf", choices=("hyperbench", "sentinel2a"), default="hyperbench",
                        help="HyperBench's built-in MSI bands, or Sentinel-2A on the cube's real wavelengths")
    parser.add_argument("--families", nargs="+", default=None, help="PSF families (default: all ten)")
    parser.add_argument("--ratios", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--bands", type=int, nargs="+", default=None, help="MSI band counts (default 4 8)")
    parser.add_argument("--sigma", type=float, default=3.4, help="PSF width, HR px (HyperBench's default)")
    parser.add_argument("--radius", type=int, default=7, help="PSF kernel radius (HyperBench's default)")
    parser.add_argument("--snr", type=float, default=35.0, help="spatial SNR dB (HyperBench's default)")
    parser.add_argument("--spectral-snr", type=float, default=40.0, help="spectral SNR dB (HyperBench's default)")
    parser.add_argument("--hb-seed", type=int, default=42, help="HyperBench's noise seed (its default)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="where the HyperBench venv lives")
    parser.add_argument("--out", type=Path, default=None, help="folder for the scene and HyperBench's CSVs")
    parser.add_argument("--ensemble", type=int, default=1,
                        help="a probe: the default preset's output as the average of this many fits (seeds s, "
                             "s + 1000, ...); the faithful preset stays one fit")
    parser.add_argument("--members", type=int, default=None,
                        help="the default preset with SpectraLift(members=K) (default: the preset's, 3): K networks "
                             "trained side by side, then their student; the faithful preset stays one network")
    parser.add_argument("--default-steps", type=int, default=None,
                        help="training steps of the default preset's fit only (default: --steps), e.g. to give an "
                             "ensemble (--members) the training time of one network")
    parser.add_argument("--default-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a SpectraLift argument for the default's fit only, e.g. members=2 (repeatable)")
    parser.add_argument("--reuse-faithful", type=Path, default=None, metavar="ALL_ROWS_CSV",
                        help="a screen: run the default only and take the faithful rows (same seeds and cases) from "
                             "an earlier run's all_rows.csv, whose faithful preset must be the same code")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    args.steps = args.steps or (300 if args.quick else None)  # None: each preset's own
    args.default_steps = args.default_steps or args.steps
    args.bands = args.bands or ([4] if args.quick else [4, 8])
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    python = ensure_venv(args.venv.expanduser().resolve())
    return launch_worker(python, argv)


if __name__ == "__main__":
    sys.exit(main())
