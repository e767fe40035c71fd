"""geolift batch: manifests, folder pairing, resume and fault tolerance on a real Dask LocalCluster.

The cluster (2 worker processes, 1 thread each) is started once for the module. Jobs are real data:
the bundled Berlin pair (split into tile tasks) and small Wald-protocol cases cut from the Potsdam
EnMAP cube and written as GeoTIFFs. Every output is compared array for array with ``geolift fuse``
(or ``fuse_files``) run in this process with the same options, seed and torch thread count.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio
import torch
from affine import Affine
from distributed import Client, get_task_stream
from helpers import read_potsdam_cube, write_tif
from typer.testing import CliRunner

from geolift import evaluate, fuse, srf
from geolift.batch import (
    BatchJob,
    BatchSettings,
    JobEvent,
    is_retryable,
    job_fingerprint,
    job_hash,
    pair_folders,
    read_manifest,
    run_batch,
    scene_key,
    sidecar_path,
    start_local_cluster,
)
from geolift.batch.resume import remove_leftovers
from geolift.errors import BatchError, InputError, JobsFailedError, OutputError
from geolift.fuse import FuseOptions, fuse_files
from geolift.model import SpectraLift

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
BERLIN_HSI = SAMPLE / "enmap_sim_berlin_30m_177b.tif"
BERLIN_MSI = SAMPLE / "hymap_berlin_3p6m_4b.tif"
POTSDAM = SAMPLE / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"
S2_BANDS = ("B2", "B3", "B4", "B8")
STEPS = 100
SEED = 7
#: Berlin's output is 494 x 660 px; 256-px tiles and 1 tile per task split it into 6 tile tasks.
BERLIN_TILE = 256
SETTINGS = BatchSettings(pixels_per_task=BERLIN_TILE * BERLIN_TILE)


# ---------------------------------------------------------------------------------------------
# Real-data inputs
# ---------------------------------------------------------------------------------------------


def write_wald_pair(folder: Path, hsi_name: str, msi_name: str, col: int, seed: int, east_m: float = 0.0):
    """A 64 x 64 px Wald case (ratio 4: LR-HSI 16 x 16 px) from columns col..col+64 of the Potsdam cube."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    gt = cube[:, :64, col:col + 64]
    R = srf.response_matrix("sentinel2a", list(S2_BANDS), wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(gt, R, ratio=4, seed=seed)
    hr = transform @ Affine.translation(col, 0)
    hr = Affine(hr.a, hr.b, hr.c + east_m, hr.d, hr.e, hr.f)
    hsi = write_tif(folder / hsi_name, case.lr_hsi.astype(np.float32), crs=crs, transform=hr @ Affine.scale(4),
                    wavelengths=wavelengths, fwhm=fwhm)
    msi = write_tif(folder / msi_name, case.hr_msi.astype(np.float32), crs=crs, transform=hr,
                    descriptions=S2_BANDS)
    return hsi, msi


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_inputs")
    pairs = {
        "a": write_wald_pair(folder, "wald_a_hsi.tif", "wald_a_msi.tif", col=0, seed=1),
        "b": write_wald_pair(folder, "wald_b_hsi.tif", "wald_b_msi.tif", col=64, seed=2),
        "c": write_wald_pair(folder, "wald_c_hsi.tif", "wald_c_msi.tif", col=32, seed=3),
    }
    broken = folder / "broken_hsi.tif"
    broken.write_bytes(b"II*\x00 this is not a GeoTIFF, the download was cut short")
    return folder, pairs, broken


def write_manifest(path: Path, rows: list[str], header: str = "hsi,msi,sensor,bands,steps,seed,tile_size") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def wald_row(pair, seed: int = SEED) -> str:
    hsi, msi = pair
    return f"{hsi},{msi},sentinel2a,B2 B3 B4 B8,{STEPS},{seed},"


def berlin_row() -> str:
    return f"{BERLIN_HSI},{BERLIN_MSI},,,{STEPS},{SEED},{BERLIN_TILE}"


@contextmanager
def torch_threads(n: int):
    """Fit in this process with ``n`` torch threads, as the batch tasks do (a fit depends on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_all(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def output_report(path) -> dict:
    """The fuse report stored in an output's metadata."""
    with rasterio.open(path) as ds:
        return json.loads(ds.tags()["geolift_report"])


# ---------------------------------------------------------------------------------------------
# The cluster and the reference outputs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    cluster = start_local_cluster(n_workers=2, torch_threads=1)
    assert cluster.processes and len(cluster.workers) == 2
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """``geolift fuse`` (the CLI, in this process, 1 torch thread) on Berlin; fuse_files on Wald A and B."""
    from geolift.cli import _register_commands, app

    _register_commands()
    folder = tmp_path_factory.mktemp("references")
    _, pairs, _ = data
    refs = {}
    with torch_threads(1):
        out = folder / "berlin.tif"
        result = CliRunner().invoke(app, ["fuse", str(BERLIN_HSI), str(BERLIN_MSI), "-o", str(out), "--steps",
                                          str(STEPS), "--seed", str(SEED), "--tile-size", str(BERLIN_TILE),
                                          "--progress", "none", "--quiet"])
        assert result.exit_code == 0, result.output
        refs["berlin"] = read_all(out)
        for key in ("a", "b"):
            hsi, msi = pairs[key]
            options = FuseOptions(sensor="sentinel2a", bands=S2_BANDS, steps=STEPS, seed=SEED)
            fuse_files(hsi, msi, folder / f"wald_{key}.tif", options)
            refs[key] = read_all(folder / f"wald_{key}.tif")
    return refs


@pytest.fixture(scope="module")
def first_run(client, data, tmp_path_factory):
    """One batch: Berlin (6 tile tasks), three Wald cases (one task each) and a broken HSI."""
    folder, pairs, broken = data
    outdir = tmp_path_factory.mktemp("batch_out")
    manifest = write_manifest(folder / "jobs.csv", [
        berlin_row(), wald_row(pairs["a"]), wald_row(pairs["b"]), wald_row(pairs["c"]),
        f"{broken},{pairs['a'][1]},sentinel2a,B2 B3 B4 B8,{STEPS},{SEED},",
    ])
    jobs = read_manifest(manifest, outdir)
    events: list[JobEvent] = []
    with get_task_stream(client) as stream:
        report = run_batch(jobs, client, SETTINGS, progress=events.append)
    keys = [t["key"] for t in stream.data]
    return jobs, report, outdir, events, keys, manifest


# ---------------------------------------------------------------------------------------------
# Manifest parsing
# ---------------------------------------------------------------------------------------------


def test_manifest_rows_become_jobs_with_paths_and_options(tmp_path):
    (tmp_path / "scenes").mkdir()
    manifest = write_manifest(tmp_path / "m.csv", [
        "# a comment line",
        "scenes/a_hsi.tif,scenes/a_msi.tif,sentinel2,B02 b3 B4 B8,,,",
        "",
        "s3://bucket/enmap.tif,https://example.org/s2.tif,landsat8,,300,5,256",
        "scenes/c_hsi.tif,scenes/B02.jp2;scenes/B03.jp2;scenes/with space/B04.jp2,sentinel2,B2 B3 B4,,,",
        "scenes/d_hsi.tif,scenes/B02.jp2 scenes/B03.jp2,sentinel2,B2 B3,,,",
    ])
    defaults = FuseOptions(steps=50, seed=1, harmonize=True)
    jobs = read_manifest(manifest, tmp_path / "out", defaults)
    assert [j.line for j in jobs] == [3, 5, 6, 7]
    a, url, c, d = jobs
    assert a.hsi == str(tmp_path / "scenes" / "a_hsi.tif") and a.msi == (str(tmp_path / "scenes" / "a_msi.tif"),)
    assert a.output == str(tmp_path / "out" / "a_hsi_fused.tif") and a.name == "a_hsi_fused"
    assert a.options.sensor == "sentinel2" and a.options.bands == ("B02", "b3", "B4", "B8")
    assert (a.options.steps, a.options.seed, a.options.harmonize) == (50, 1, True)  # batch-wide defaults
    assert url.hsi == "/vsis3/bucket/enmap.tif" and url.msi == ("/vsicurl/https://example.org/s2.tif",)
    assert (url.options.steps, url.options.seed, url.options.tile_size) == (300, 5, 256)
    assert c.msi[2] == str(tmp_path / "scenes" / "with space" / "B04.jp2") and len(c.msi) == 3
    assert c.msi_source == list(c.msi)
    assert len(d.msi) == 2 and d.options.bands == ("B2", "B3")


def test_manifest_output_column_and_boolean_options(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [
        "h1.tif,m1.tif,sub/first.tif,yes,false,int16",
        "h2.tif,m2.tif,/abs/second.tif,,,",
    ], header="hsi,msi,output,harmonize,align,dtype")
    first, second = read_manifest(manifest, tmp_path / "out")
    assert first.output == str(tmp_path / "out" / "sub" / "first.tif") and first.name == "sub/first"
    assert (first.options.harmonize, first.options.align, first.options.dtype) == (True, False, "int16")
    assert second.output == "/abs/second.tif" and second.options.align is True


def test_manifest_members_column_sets_the_ensemble_per_job(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", ["h1.tif,m1.tif,2", "h2.tif,m2.tif,"], header="hsi,msi,members")
    ensemble, default = read_manifest(manifest, tmp_path / "out", FuseOptions(members=3))
    assert (ensemble.options.members, default.options.members) == (2, 3)  # an empty cell keeps the batch's value
    assert fuse.model_overrides(ensemble.options) == {"members": 2}


@pytest.mark.parametrize("content, expected", [
    ("hsi,sensor\na.tif,sentinel2\n", "no 'msi' column"),
    ("", "is empty"),
    ("\n# only a comment\n", "is empty"),
    ("hsi,msi,sensor\n", "lists no jobs"),
    ("hsi,msi,steps\na.tif,b.tif,100\nc.tif,d.tif,many\n", "line 3: column 'steps' must be a whole number"),
    ("hsi,msi\na.tif,b.tif\nc.tif,d.tif,extra\n", "line 3: 3 fields but the header has 2"),
    ("hsi,msi,stpes\na.tif,b.tif,100\n", "unknown column(s) 'stpes'"),
    ("hsi,msi,sensor\na.tif,b.tif,sentinel9\n", "line 2"),
    ("hsi,msi,sensor,bands\na.tif,b.tif,sentinel2,B2 B99\n", "line 2"),
    ("hsi,msi\n,b.tif\n", "line 2: the hsi cell is empty"),
    ("hsi,msi,harmonize\na.tif,b.tif,maybe\n", "line 2: column 'harmonize' must be true or false"),
    ("hsi,msi\nx/a.tif,b.tif\ny/a.tif,c.tif\n", "line 3: writes the same output"),
    ("hsi,msi,tile_size\na.tif,b.tif,100\n", "multiple of 16"),
    ("hsi,msi,members\na.tif,b.tif,0\n", "line 2: column 'members' must be at least 1"),
    ("hsi,msi\nsftp://host/a.tif,b.tif\n", "line 2: Unsupported URL scheme 'sftp'"),
])
def test_manifest_mistakes_raise_batch_error_with_the_line(tmp_path, content, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(BatchError) as info:
        read_manifest(manifest, tmp_path / "out")
    assert expected in str(info.value)


def test_a_report_that_cannot_be_written_is_an_output_error(tmp_path):
    from geolift.batch import BatchReport, JobResult

    report = BatchReport([JobResult("a", "a.tif", "b.tif", str(tmp_path / "a_fused.tif"), "done")],
                         started_utc="2026-01-01T00:00:00+00:00", seconds=1.0, scheduler="", workers=1)
    (tmp_path / "batch_report.json").mkdir()  # a folder where the report should go
    with pytest.raises(OutputError, match="batch report"):
        report.write(tmp_path)
    assert not (tmp_path / "batch_report.csv").exists()


def test_missing_manifest_is_a_batch_error(tmp_path):
    with pytest.raises(BatchError, match="not found"):
        read_manifest(tmp_path / "nope.csv", tmp_path)


# ---------------------------------------------------------------------------------------------
# Pairing two folders
# ---------------------------------------------------------------------------------------------


def test_scene_key_finds_dates_or_the_match_group():
    enmap = "ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z-SPECTRAL_IMAGE.TIF"
    assert scene_key(enmap) == "20220724"  # the first date: acquisition, not processing
    assert scene_key("S2A_MSIL2A_2022-07-24_T33UUU.tif") == "20220724"
    assert scene_key("scene_20221341.tif") is None  # no month 13
    assert scene_key("S2A_T33UUU_B02.tif", r"_(T\d{2}[A-Z]{3})_") == "T33UUU"
    assert scene_key("nothing_here.tif") is None


def test_pair_folders_by_scene_id_then_footprint(tmp_path, data):
    _, pairs, _ = data
    hsi_dir, msi_dir = tmp_path / "hsi", tmp_path / "msi"
    hsi_dir.mkdir()
    msi_dir.mkdir()
    # By date: A's scenes carry the same date. B's HSI has no date: paired by footprint with B's MSI,
    # not with A's or with a scene 10 km east. A third HSI overlaps nothing and stays unmatched.
    os.link(pairs["a"][0], hsi_dir / "enmap_20220724_a.tif")
    os.link(pairs["a"][1], msi_dir / "s2_20220724.tif")
    os.link(pairs["b"][0], hsi_dir / "enmap_b.tif")
    os.link(pairs["b"][1], msi_dir / "s2_b_20230101.tif")
    write_wald_pair(tmp_path, "far_hsi.tif", "far_msi.tif", col=0, seed=4, east_m=10_000)
    os.replace(tmp_path / "far_msi.tif", msi_dir / "s2_far.tif")
    write_wald_pair(tmp_path, "lonely_hsi.tif", "unused.tif", col=0, seed=4, east_m=-50_000)
    os.replace(tmp_path / "lonely_hsi.tif", hsi_dir / "lonely.tif")
    (msi_dir / "s2_20220724.tif.aux.xml").write_text("<PAMDataset/>")  # not a raster: ignored

    options = FuseOptions(sensor="sentinel2a", bands=S2_BANDS)
    jobs, unmatched = pair_folders(hsi_dir, msi_dir, tmp_path / "out", options)
    pairs_found = {Path(j.hsi).name: Path(j.msi[0]).name for j in jobs}
    assert pairs_found == {"enmap_20220724_a.tif": "s2_20220724.tif", "enmap_b.tif": "s2_b_20230101.tif"}
    assert unmatched == [str(hsi_dir / "lonely.tif")]
    assert all(j.options == options for j in jobs)
    assert jobs[0].output == str(tmp_path / "out" / "enmap_20220724_a_fused.tif")

    # A --match regex with one group replaces the date as the scene id.
    jobs, _ = pair_folders(hsi_dir, msi_dir, tmp_path / "out", options, match=r"_(b)[_.]")
    assert {Path(j.hsi).name: Path(j.msi[0]).name for j in jobs}["enmap_b.tif"] == "s2_b_20230101.tif"
    with pytest.raises(BatchError, match="exactly one group"):
        pair_folders(hsi_dir, msi_dir, tmp_path / "out", options, match=r"(\d+)_(\d+)")
    with pytest.raises(BatchError, match="No raster files"):
        pair_folders(hsi_dir, msi_dir, tmp_path / "out", options, msi_glob="*.jp2")


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------


def test_fingerprint_follows_inputs_and_result_relevant_options(tmp_path, data):
    _, pairs, _ = data
    hsi = tmp_path / "h.tif"
    hsi.write_bytes(Path(pairs["a"][0]).read_bytes())
    job = BatchJob(name="j", hsi=str(hsi), msi=(str(pairs["a"][1]),), output=str(tmp_path / "o.tif"),
                   options=FuseOptions(sensor="sentinel2a", steps=10))
    digest = job_hash(job_fingerprint(job))
    assert job_hash(job_fingerprint(job)) == digest
    same_result = replace(job, options=replace(job.options, overwrite=True, num_threads=4, scratch="none"))
    assert job_hash(job_fingerprint(same_result)) == digest  # none changes the pixels
    # nor is the scratch hashed at all: outputs finished before the option existed stay up to date
    assert "scratch" not in job_fingerprint(job)["options"]
    assert job_hash(job_fingerprint(replace(job, options=replace(job.options, steps=11)))) != digest
    assert job_hash(job_fingerprint(job, torch_threads=2)) != digest  # a fit depends on the thread count
    # the output options added with --cog/--co change the file, so they count; at their defaults they are left out,
    # so outputs finished before they existed stay up to date
    assert not {"cog", "creation_options"} & set(job_fingerprint(job)["options"])
    assert job_hash(job_fingerprint(replace(job, options=replace(job.options, cog=True)))) != digest
    zstd = replace(job, options=replace(job.options, creation_options=("COMPRESS=ZSTD",)))
    assert job_hash(job_fingerprint(zstd)) != digest
    stat = hsi.stat()
    os.utime(hsi, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert job_hash(job_fingerprint(job)) != digest
    remote = replace(job, hsi="/vsis3/bucket/h.tif")
    assert job_fingerprint(remote)["hsi"] == {"path": "/vsis3/bucket/h.tif"}  # never stat'ed


def test_a_rerun_removes_what_a_killed_run_left_beside_its_own_output_only(tmp_path):
    output = tmp_path / "a_fused.tif"
    mine = [tmp_path / f".a_fused.tif.geolift-tmp-{uuid}" for uuid in ("1", "2")]
    for path in mine:
        path.write_bytes(b"partial")
    scratch = tmp_path / ".a_fused.tif.geolift-scratch-xyz"
    scratch.mkdir()
    (scratch / "network_output.f32").write_bytes(b"\0" * 64)
    others = [tmp_path / ".b_fused.tif.geolift-scratch-xyz", tmp_path / ".b_fused.tif.geolift-tmp-1"]
    others[0].mkdir()
    others[1].write_bytes(b"another job's")
    remove_leftovers(output)
    assert not any(path.exists() for path in [*mine, scratch])
    assert all(path.exists() for path in others)  # another job's, perhaps running now


def test_retryable_failures_are_worker_and_io_errors_not_input_errors():
    from distributed.scheduler import KilledWorker

    assert not is_retryable(InputError("bad file"))
    assert not is_retryable(ValueError("a bug"))
    assert is_retryable(OSError("network reset"))
    assert is_retryable(MemoryError())
    assert is_retryable(KilledWorker("prepare-x", None, 0))


# ---------------------------------------------------------------------------------------------
# Running batches on the cluster
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.reproducible  # batch writes what fuse writes, bit for bit: under every kernel level in .ci/run
def test_batch_fuses_real_data_and_reports_the_broken_job(client, first_run, references):
    jobs, report, outdir, events, keys, _ = first_run
    status = {r.job: r for r in report.results}
    berlin, a, b, c, broken = (status[j.name] for j in jobs)
    assert [berlin.status, a.status, b.status, c.status] == ["done"] * 4
    assert broken.status == "failed" and broken.attempts == 1  # an input error is not retried
    assert "broken_hsi.tif" in broken.reason and "as a raster" in broken.reason
    assert not Path(jobs[4].output).exists() and not sidecar_path(jobs[4].output).exists()

    # Identical to geolift fuse with the same seed: Berlin went through 6 tile tasks, the Wald
    # cases through one task each.
    assert sum(k.startswith("geolift_tiles-enmap_sim_berlin") for k in keys) == 6
    assert not any(k.startswith("geolift_tiles-wald") for k in keys)
    np.testing.assert_array_equal(read_all(jobs[0].output), references["berlin"])
    np.testing.assert_array_equal(read_all(jobs[1].output), references["a"])
    np.testing.assert_array_equal(read_all(jobs[2].output), references["b"])

    workers = set(client.scheduler_info()["workers"])
    for job in jobs[:4]:
        sidecar = json.loads(sidecar_path(job.output).read_text())
        assert sidecar["hash"] == job_hash(job_fingerprint(job)) and sidecar["job"] == job.name
        assert sidecar["written_by"]["worker"] in workers  # a worker wrote it, not this (the client's) process
    assert not list(outdir.glob(".*geolift-tmp-*")) and not list(outdir.glob(".*geolift-scratch-*"))
    # A job written whole kept pass 1's network output for pass 2, as geolift fuse does (the same bits, above);
    # Berlin's tile tasks predicted their own windows.
    scratch = {job.name: output_report(job.output)["scratch_bytes"] for job in jobs[:4]}
    assert scratch[jobs[0].name] == 0
    assert all(scratch[job.name] > 0 for job in jobs[1:4])
    stages = {e.stage for e in events if e.job == jobs[0].name}
    assert {"read", "train", "write", "done"} <= stages
    train = [e for e in events if e.job == jobs[0].name and e.stage == "train"]
    members_and_student = STEPS + SpectraLift(steps=STEPS).student_steps  # the default recipe's whole fit
    assert train[-1].done == train[-1].total == members_and_student  # training progress comes back from the worker

    json_path, csv_path = report.write(outdir)
    saved = json.loads(json_path.read_text())
    assert saved["summary"] == {"done": 4, "skipped": 0, "failed": 1, "total": 5}
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["job", "hsi", "msi", "output", "status", "reason", "seconds", "attempts", "pair_check",
                             "days_apart"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "done", "failed"]
    assert [r["pair_check"] for r in rows] == ["consistent"] * 4 + [""]  # the pair check's verdict per job
    assert float(rows[0]["seconds"]) > 0 and "as a raster" in rows[4]["reason"]


@pytest.mark.slow
def test_rerun_skips_finished_jobs_and_redoes_changed_or_deleted_ones(client, first_run, references):
    jobs, _, outdir, _, _, _ = first_run
    wald_jobs = jobs[1:]  # Berlin's skip is covered by the CLI test below; keep this one fast
    again = run_batch(wald_jobs, client, SETTINGS)
    assert [r.status for r in again.results] == ["skipped", "skipped", "skipped", "failed"]
    assert again.results[0].attempts == 0

    b_output = Path(jobs[2].output)
    b_output.unlink()
    c_job = replace(jobs[3], options=replace(jobs[3].options, seed=SEED + 1))
    before_a = Path(jobs[1].output).stat().st_mtime_ns
    third = run_batch([jobs[1], jobs[2], c_job], client, SETTINGS)
    assert [r.status for r in third.results] == ["skipped", "done", "done"]
    assert Path(jobs[1].output).stat().st_mtime_ns == before_a
    np.testing.assert_array_equal(read_all(b_output), references["b"])

    sidecar_path(jobs[1].output).unlink()  # an output without its sidecar is not trusted
    forced = run_batch([jobs[1], jobs[2]], client, replace(SETTINGS, force=False))
    assert [r.status for r in forced.results] == ["done", "skipped"]
    forced = run_batch([jobs[1], jobs[2]], client, replace(SETTINGS, force=True))
    assert [r.status for r in forced.results] == ["done", "done"]
    np.testing.assert_array_equal(read_all(jobs[1].output), references["a"])
    assert run_batch([jobs[3]], client, SETTINGS).results[0].status == "done"  # C back to the manifest's seed


@pytest.mark.slow
def test_batch_survives_a_worker_killed_mid_job(client, data, references, tmp_path):
    folder, pairs, _ = data
    manifest = write_manifest(tmp_path / "jobs.csv", [berlin_row(), wald_row(pairs["a"]), wald_row(pairs["b"])])
    jobs = read_manifest(manifest, tmp_path / "out")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(report=run_batch(jobs, client, SETTINGS)))
    runner.start()

    killed = None
    deadline = time.monotonic() + 60
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        for address, keys in client.processing().items():
            if any(str(k).startswith(("geolift_job-enmap_sim_berlin", "geolift_tiles-enmap_sim_berlin"))
                   for k in keys):
                pid = client.run(os.getpid, workers=[address])[address]
                psutil.Process(pid).kill()  # SIGKILL: no cleanup, like the OOM killer
                killed = address
                break
        time.sleep(0.05)
    runner.join(timeout=180)
    assert killed is not None, "the Berlin job was never seen running"
    assert not runner.is_alive()

    report = outcome["report"]
    assert [r.status for r in report.results] == ["done", "done", "done"]
    assert report.results[0].attempts == 2  # the task on the killed worker was resubmitted once
    np.testing.assert_array_equal(read_all(jobs[0].output), references["berlin"])
    np.testing.assert_array_equal(read_all(jobs[1].output), references["a"])
    assert not list((tmp_path / "out").glob(".*geolift-tmp-*"))
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


@pytest.mark.slow
def test_scenes_are_split_into_tile_tasks_only_when_workers_would_idle(client, data, references, tmp_path):
    """By default a batch with at least as many jobs as worker threads runs each scene as one task (no pixel
    crosses between workers); one scene on two workers is split into tile tasks. Same output either way."""
    _, pairs, _ = data
    runs = {}
    for name, rows in (("alone", [berlin_row()]), ("with_another", [berlin_row(), wald_row(pairs["a"])])):
        jobs = read_manifest(write_manifest(tmp_path / f"{name}.csv", rows), tmp_path / name)
        with get_task_stream(client) as stream:
            report = run_batch(jobs, client, BatchSettings())
        assert [r.status for r in report.results] == ["done"] * len(jobs)
        runs[name] = sum(str(t["key"]).startswith("geolift_tiles-enmap_sim_berlin") for t in stream.data)
        np.testing.assert_array_equal(read_all(jobs[0].output), references["berlin"])
    assert runs == {"alone": 2, "with_another": 0}  # 6 windows of 256 px, 4 per 512 x 512-pixel task


@pytest.mark.slow
def test_a_worker_killed_while_writing_leaves_nothing_visible_and_the_retry_completes(client, references, tmp_path):
    """Kill (SIGKILL) the worker whose job task is writing Berlin's output: no output appears until the retry has
    written all of it, the retry's output is identical to geolift fuse, and no temporary file is left."""
    manifest = write_manifest(tmp_path / "jobs.csv", [berlin_row()])
    outdir = tmp_path / "out"
    jobs = read_manifest(manifest, outdir)
    output = Path(jobs[0].output)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(report=run_batch(jobs, client, SETTINGS)))
    runner.start()

    killed, visible_at_kill, first_sight = None, None, None
    deadline = time.monotonic() + 120
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        if list(outdir.glob(f".{output.name}.geolift-tmp-*")):  # the writer has started
            writers = [address for address, keys in client.processing().items()
                       if any(str(k).startswith("geolift_job-enmap_sim_berlin") for k in keys)]
            if writers:
                pid = client.run(os.getpid, workers=writers[:1])[writers[0]]
                psutil.Process(pid).kill()
                killed = writers[0]
                visible_at_kill = output.exists() or sidecar_path(output).exists()
        time.sleep(0.02)
    while first_sight is None and runner.is_alive() and time.monotonic() < deadline:
        if output.exists():  # the first moment the retry's output is visible, it is already whole
            first_sight = read_all(output)
        time.sleep(0.02)
    runner.join(timeout=60)
    assert killed is not None, "Berlin's writer was never seen writing"
    assert visible_at_kill is False
    if first_sight is not None:  # (None: the batch finished between two looks)
        np.testing.assert_array_equal(first_sight, references["berlin"])

    report = outcome["report"]
    assert report.results[0].status == "done" and report.results[0].attempts == 2
    np.testing.assert_array_equal(read_all(output), references["berlin"])
    assert json.loads(sidecar_path(output).read_text())["written_by"]["worker"] != killed
    assert not list(outdir.glob(".*geolift-tmp-*"))
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_cli_batch_exit_codes_report_and_resume(client, first_run, data, tmp_path):
    from geolift.cli import _register_commands, app

    _register_commands()
    jobs, _, outdir, _, _, manifest = first_run
    address = client.scheduler.address
    runner = CliRunner()

    # Re-running the first batch through the CLI: the four finished jobs are skipped (Berlin
    # included), the broken one fails again, so the exit code is 7 (some jobs failed; not a generic error's 1).
    result = runner.invoke(app, ["batch", str(manifest), "-o", str(outdir), "--scheduler", address,
                                 "--progress", "none"])
    assert result.exit_code == JobsFailedError.exit_code == 7, result.output
    assert "1 of 5 job(s) failed" in result.output
    rows = list(csv.DictReader(open(outdir / "batch_report.csv", newline="")))
    assert [r["status"] for r in rows] == ["skipped"] * 4 + ["failed"]
    # every finished job's pair-check verdict is in the report (from its sidecar when skipped); these pairs are good
    assert [r["pair_check"] for r in rows] == ["consistent"] * 4 + [""]
    log_text = (outdir / "batch.log").read_text()
    assert "[5/5] broken_hsi_fused: failed after 1 attempt" in log_text  # overall progress in the log

    _, pairs, _ = data
    good = write_manifest(tmp_path / "good.csv", [wald_row(pairs["c"])])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = runner.invoke(app, ["batch", str(good), "-o", str(tmp_path / "out"), "--scheduler", address,
                                 "--progress", "plain", "--log", str(tmp_path / "run.log"), "--qa",
                                 "--scratch", str(scratch)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "wald_c_hsi_fused.tif").is_file()
    assert output_report(tmp_path / "out" / "wald_c_hsi_fused.tif")["scratch_bytes"] > 0  # kept there, then
    assert list(scratch.iterdir()) == []  # deleted
    with rasterio.open(tmp_path / "out" / "wald_c_hsi_fused.tif") as out, \
            rasterio.open(tmp_path / "out" / "wald_c_hsi_fused_qa.tif") as qa:  # --qa: the layer beside it
        assert qa.descriptions[3] == "nodata_reason" and (qa.transform, qa.shape) == (out.transform, out.shape)
        np.testing.assert_array_equal(qa.read(4) == 0, np.isfinite(out.read(1)))
    assert "geolift: progress 100.0% batch" in result.output
    assert "done in" in (tmp_path / "run.log").read_text()
    assert f"for pass 2 in {scratch}" in (tmp_path / "run.log").read_text()  # the worker's log line: kept there

    bad = write_manifest(tmp_path / "bad.csv", ["a.tif,b.tif,sentinel2,,lots,,"])
    result = runner.invoke(app, ["batch", str(bad), "-o", str(tmp_path / "out2"), "--scheduler", address])
    assert result.exit_code == BatchError.exit_code
    assert "line 2" in result.output and "Traceback" not in result.output

    result = runner.invoke(app, ["batch", "-o", str(tmp_path / "out3")])
    assert result.exit_code == BatchError.exit_code and "MANIFEST" in result.output
    result = runner.invoke(app, ["batch", str(good), "-o", str(tmp_path / "out4"), "--scratch", str(tmp_path / "no")])
    assert result.exit_code == BatchError.exit_code  # before a local cluster starts
    assert "scratch folder" in result.output and "does not exist" in result.output


def test_worker_warnings_reach_the_console_as_one_line_with_the_job(client, tmp_path):
    """A GeoliftWarning raised on a worker (a partly covered band) is printed as `geolift: warning: <job>: ...`."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    bands = [f"B{k}" for k in range(1, 9)]
    R = srf.build_response("worldview3", bands, wavelengths, fwhm_nm=fwhm, min_coverage=0.01).matrix
    case = evaluate.make_wald_case(cube[:, :64, :64], R, ratio=4, seed=2)
    hsi = write_tif(tmp_path / "enmap.tif", case.lr_hsi.astype(np.float32), crs=crs,
                    transform=transform @ Affine.scale(4), wavelengths=wavelengths, fwhm=fwhm)
    msi = write_tif(tmp_path / "wv3.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform,
                    descriptions=bands)
    manifest = write_manifest(tmp_path / "m.csv", [f"{hsi},{msi},worldview3,,20,0,"])
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "out"), "--scheduler",
                                      client.scheduler.address, "--progress", "none"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("geolift: warning:")]
    assert any(line.startswith("geolift: warning: enmap_fused: ") and "B1 (" in line for line in warnings), \
        result.output
    assert "GeoliftWarning" not in result.output and ".py:" not in result.output
