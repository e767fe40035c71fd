"""Reproducibility and quality across CPU kernel levels: what changes when the CPU (or its BLAS code path) does.

Each kernel level runs in a fresh process, since torch and MKL read these variables once, at start:

* as the machine is (torch and MKL pick the widest kernels the CPU has);
* ``ATEN_CPU_CAPABILITY=default`` and ``=avx2``: torch's own element-wise and reduction kernels capped;
* ``MKL_CBWR=COMPATIBLE``, ``=AVX2`` and (where the CPU has AVX-512) ``=AVX512``: MKL's conditional numerical
  reproducibility modes, i.e. the GEMM code paths of an older or other CPU.

In each it measures, on the quality test's case (Potsdam EnMAP cube, Wald protocol, Sentinel-2A B2/B3/B4/B8,
ratio 4, Gaussian sigma 3.4 (15 x 15), LR-HSI 35 dB, HR-MSI 40 dB, data seed 42; ``tests/test_refine.py``):

1. **identity**: SHA-256 of the prediction, and of the refined cube, of a network whose weights no kernel can
   change (drawn with numpy) - the same prediction digest everywhere means inference computes the same bits on
   every kernel level; the consistency step's spectral basis comes from MKL's eigensolver, so its digest may not;
2. **quality**: per training seed, PSNR and SAM of the default mode (geolift preset + consistency step) and of the
   faithful preset; training rounds differently on each level, so these are draws from one distribution;
3. **cost**: the faithful fit's time (is a pinned reproducible MKL mode worth it?) and ``predict`` on a
   1000 x 1000 image (exact network) against the float32 forward pass it replaced.

    python benchmarks/kernel_levels.py [--seeds N] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from potsdam_wald import CUBE, machine, read_cube  # noqa: E402

FIRST_SEED = 42
START, END = "<!-- kernel levels: start -->", "<!-- kernel levels: end -->"


def settings() -> list[tuple[str, dict[str, str]]]:
    """The kernel levels this CPU can run, each as (label, environment)."""
    levels = [("as is", {}), ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}),
              ("ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}),
              ("MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}), ("MKL_CBWR=AVX2", {"MKL_CBWR": "AVX2"})]
    if "avx512f" in Path("/proc/cpuinfo").read_text():
        levels.append(("MKL_CBWR=AVX512", {"MKL_CBWR": "AVX512"}))
    return levels


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def float32_forward(net, x, out, chunk: int = 65536) -> None:
    """The float32 inference geolift had before the exact network (in-place activations, band-first output)."""
    import torch
    from torch.nn import functional as F

    def act(layer, h):
        return F.leaky_relu_(torch.addmm(layer.bias, h, layer.weight.T), 0.3)

    with torch.inference_mode():
        for a in range(0, x.shape[0], chunk):
            xc = x[a:a + chunk]
            x1 = act(net.layer1, xc)
            h = act(net.layer2, x1).add_(x1)
            h = act(net.layer4, act(net.layer3, h)).add_(h)
            h = act(net.layer6, act(net.layer5, h)).add_(h)
            y = torch.addmm(net.output_layer.bias[:, None], net.output_layer.weight, h.T, out=out[:, a:a + chunk])
            y.clamp_(0.0, 1.0)


def child(seeds: int) -> dict:
    """Everything measured under the current environment (run in a fresh process)."""
    import torch

    from geolift import evaluate as ev
    from geolift import refine as rf
    from geolift import srf
    from geolift.model import SpectraLift

    torch.set_num_threads(1)
    cube, wavelengths, fwhm = read_cube(CUBE)
    R = srf.response_matrix("sentinel2a", ["B2", "B3", "B4", "B8"], wavelengths, fwhm)
    case = ev.make_wald_case(cube, R, ratio=4, psf=ev.gaussian_psf(3.4, 7), snr_hsi_db=35, snr_msi_db=40, seed=42)
    out: dict = {"capability": torch.backends.cpu.get_cpu_capability(), "seeds": []}

    # Weights that no kernel can change: drawn with numpy (torch's own uniform_ rounds differently per kernel
    # level, so even a seeded initialisation differs), put in place of a fitted model's (a fit with learning rate
    # 0 only sets the data range).
    frozen = SpectraLift(preset="spectralift", seed=0, steps=1, lr_initial=0.0, lr_max=0.0, lr_final=0.0,
                         value_range=(0, 1), num_threads=1).fit(case.lr_hsi, case.R)
    draw = np.random.default_rng(0)
    frozen._state = {k: (draw.uniform(-0.3, 0.3, v.shape) if k.endswith("weight")
                         else draw.uniform(-0.05, 0.05, v.shape))
                     .astype(np.float32) for k, v in frozen._state.items()}
    frozen._net = None
    x0 = frozen.predict(case.hr_msi)
    refined, _, _ = rf.refine(x0, case.lr_hsi, case.hr_msi, case.R, 4, value_range=(0.0, 1.0))
    out["prediction_sha256"], out["refined_sha256"] = digest(x0), digest(refined)

    for seed in range(FIRST_SEED, FIRST_SEED + seeds):
        t0 = time.perf_counter()
        faithful = SpectraLift(preset="spectralift", seed=seed, value_range=(0, 1), num_threads=1)
        x_faithful = faithful.fit(case.lr_hsi, case.R).predict(case.hr_msi)
        fit_s = time.perf_counter() - t0
        default = SpectraLift(preset="geolift", seed=seed, value_range=(0, 1), num_threads=1)
        x = default.fit(case.lr_hsi, case.R).predict(case.hr_msi, ratio=4)  # with the recipe's consistency step
        out["seeds"].append({"seed": seed, "faithful_fit_s": fit_s,
                             "psnr_faithful": ev.psnr(case.gt, x_faithful), "psnr_default": ev.psnr(case.gt, x),
                             "sam_faithful": ev.sam(case.gt, x_faithful), "sam_default": ev.sam(case.gt, x)})

    # inference cost: predict() on a 1000 x 1000 MSI image against the float32 forward pass it replaced (in place,
    # band-first, the output layer written straight into the image: what SpectraLiftMLP.predict_into did)
    image = np.random.default_rng(0).random((4, 1000, 1000)).astype(np.float32) * 0.3
    net = frozen.network()
    flat = torch.from_numpy(image.reshape(4, -1).T.copy())
    timings = {"exact": [], "float32": []}
    for _ in range(3):
        t0 = time.perf_counter()
        frozen.predict(image)
        timings["exact"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        float32_forward(net, flat, torch.empty((frozen.n_bands_out, flat.shape[0])))
        timings["float32"].append(time.perf_counter() - t0)
    out["exact_s_per_mpx"] = min(timings["exact"])
    out["float32_s_per_mpx"] = min(timings["float32"])
    return out


def report(results: list[tuple[str, dict]], seeds: int) -> list[str]:
    lines = [f"machine: {machine()}",
             f"case: tests/test_refine.py's quality case (Potsdam, S2A 4 bands, ratio 4, Gaussian 3.4); "
             f"training seeds {FIRST_SEED}..{FIRST_SEED + seeds - 1}; 1 torch thread; each level a fresh process", "",
             "1. identity (fixed weights drawn with numpy): SHA-256 of the prediction / of the refined cube"]
    for label, r in results:
        lines.append(f"   {label:<28} torch kernels {r['capability']:<8} {r['prediction_sha256']} / "
                     f"{r['refined_sha256']}")
    predictions = len({r["prediction_sha256"] for _, r in results})
    refined = len({r["refined_sha256"] for _, r in results})
    lines += [f"   -> prediction: {'identical on every level' if predictions == 1 else f'{predictions} different'}; "
              f"refined: {'identical on every level' if refined == 1 else f'{refined} different digests'}", "",
              "2. quality, default mode vs faithful preset: PSNR gain (dB) per seed | mean, SAM ratio mean | "
              "faithful PSNR mean"]
    means = []
    for label, r in results:
        gains = [s["psnr_default"] - s["psnr_faithful"] for s in r["seeds"]]
        ratios = [s["sam_default"] / s["sam_faithful"] for s in r["seeds"]]
        means.append((float(np.mean(gains[:3])), float(np.mean(ratios[:3])), min(gains)))
        lines.append(f"   {label:<28} " + " ".join(f"{g:+.2f}" for g in gains) + f" | {np.mean(gains):+.2f}, "
                     f"{np.mean(ratios):.3f} | {np.mean([s['psnr_faithful'] for s in r['seeds']]):.2f}")
    all_gains = [s["psnr_default"] - s["psnr_faithful"] for _, r in results for s in r["seeds"]]
    lines += [f"   all levels and seeds: mean {np.mean(all_gains):+.2f} dB, std {np.std(all_gains):.2f}, "
              f"min {min(all_gains):+.2f}, max {max(all_gains):+.2f}",
              f"   the test's statistic (mean over seeds {FIRST_SEED}-{FIRST_SEED + 2}): "
              f"{min(m[0] for m in means):+.2f} .. {max(m[0] for m in means):+.2f} dB across levels; "
              f"mean SAM ratio {min(m[1] for m in means):.3f} .. {max(m[1] for m in means):.3f}; "
              f"worst single seed {min(m[2] for m in means):+.2f} dB", "",
              "3. cost: faithful fit (s, mean over seeds) | predict s per Mpx (218 bands): "
              "exact vs float32 forward (ratio)"]
    for label, r in results:
        fit = np.mean([s["faithful_fit_s"] for s in r["seeds"]])
        lines.append(f"   {label:<28} {fit:6.2f} s | {r['exact_s_per_mpx']:.2f} vs {r['float32_s_per_mpx']:.2f} "
                     f"({r['exact_s_per_mpx'] / r['float32_s_per_mpx']:.2f}x)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 42, 43, ... (default 5)")
    parser.add_argument("--markdown", type=Path, help="also write the report between the markers in this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.seeds)))
        return 0
    results = []
    for label, env in settings():
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", "--seeds", str(args.seeds)],
                              env={**os.environ, **env}, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        results.append((label, json.loads(done.stdout.strip().splitlines()[-1])))
        print(f"[{label}: {time.perf_counter() - started:.0f} s]", flush=True)
    lines = report(results, args.seeds)
    print("\n".join(lines))
    if args.markdown:
        text = args.markdown.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        block = ["", "## Across CPU kernel levels: identity, quality over seeds, cost", "",
                 f"`python benchmarks/kernel_levels.py --seeds {args.seeds}` "
                 f"({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC); what the levels are and what follows "
                 "from them: `docs/reproducibility.md`.", "",
                 "```", *lines, "```", ""]
        args.markdown.write_text(head + START + "\n".join(block) + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
