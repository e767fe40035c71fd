"""Batch outputs on object storage, against a real S3 protocol server (moto's, on a local port).

GDAL talks to the server as to AWS (``AWS_S3_ENDPOINT``, path-style, plain HTTP, dummy keys); the Dask workers are
started after those variables are set, so they inherit them. Nothing of GDAL or rasterio is mocked: the job tasks
write in a local folder on their worker and upload through GDAL's ``/vsis3/``, the client reads the sidecars back
through it, and the test reads the outputs back with rasterio and checks the bucket with boto3.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from distributed import Client
from test_batch import STEPS, read_all, wald_row, write_manifest, write_wald_pair
from typer.testing import CliRunner

from geolift.batch import BatchSettings, pair_folders, read_manifest, run_batch, start_local_cluster
from geolift.batch.object_storage import STAGE_PREFIX
from geolift.errors import BatchError, InputError, JobsFailedError, OutputError
from geolift.io import vsi

BUCKET = "geolift-test"
REGION = "us-east-1"
#: What a finished job uploads, in order: output, QA layer, STAC Item, and last the sidecar; then the client
#: uploads the Collection.
UPLOADS = [("PUT", "out/wald_s3_hsi_fused.tif"), ("PUT", "out/wald_s3_hsi_fused_qa.tif"),
           ("PUT", "out/wald_s3_hsi_fused.stac.json"), ("PUT", "out/wald_s3_hsi_fused.tif.geolift.json"),
           ("PUT", "out/collection.json")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free local port with one bucket; GDAL (here and in the workers) pointed at it.

    Also points TMPDIR at a fresh folder, so the tests can see that the workers' local job folders are removed."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (the test extra installs it)")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        tmpdir = tmp_path_factory.mktemp("worker_tmp")
        env = {
            "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "TMPDIR": str(tmpdir),
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            patch.delenv("AWS_PROFILE", raising=False)
            patch.delenv("AWS_SESSION_TOKEN", raising=False)
            bucket = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
            bucket.create_bucket(Bucket=BUCKET)
            yield bucket, tmpdir, log
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def client(s3):
    """One single-threaded worker process, started after the S3 variables are set (it inherits them)."""
    cluster = start_local_cluster(n_workers=1, torch_threads=1)
    with Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3_inputs")
    return folder, write_wald_pair(folder, "wald_s3_hsi.tif", "wald_s3_msi.tif", col=16, seed=5)


def keys(bucket, prefix: str) -> dict[str, object]:
    """The bucket's objects under ``prefix``: key -> ETag (changes when an object is uploaded again)."""
    listing = bucket.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def writes(log: Path, prefix: str) -> list[tuple[str, str]]:
    """The server's write requests (PUT, POST, DELETE) under ``prefix``, in the order it served them (its access
    log, one line per request)."""
    pattern = re.compile(rf'"(PUT|POST|DELETE) /{BUCKET}/({re.escape(prefix)}[^ ?]*)')
    return [m.groups() for m in map(pattern.search, log.read_text().splitlines()) if m]


def stages(tmpdir: Path) -> list[Path]:
    return list(Path(tmpdir).glob(f"{STAGE_PREFIX}*"))


def cli(*args: str):
    from geolift.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, ["batch", *args, "--progress", "none"])


# ---------------------------------------------------------------------------------------------------- geolift.io.vsi


def test_vsi_reads_writes_uploads_and_deletes_objects(s3, tmp_path, monkeypatch):
    bucket = s3[0]
    path = f"/vsis3/{BUCKET}/vsi/a.json"
    assert vsi.is_vsi_path(path) and vsi.is_writable_vsi_path(path) and not vsi.exists(path)
    vsi.write_bytes(path, b'{"a": 1}\n')
    assert vsi.exists(path) and vsi.size(path) == 9 and vsi.read_bytes(path) == b'{"a": 1}\n'
    assert bucket.get_object(Bucket=BUCKET, Key="vsi/a.json")["Body"].read() == b'{"a": 1}\n'

    # 12 MB in 5 MB parts: GDAL's multipart upload, completed only when the handle closes
    monkeypatch.setenv("VSIS3_CHUNK_SIZE", "5")
    local = tmp_path / "big.bin"
    content = np.random.default_rng(0).integers(0, 255, 12 * 1024 * 1024 + 7, dtype=np.uint8).tobytes()
    local.write_bytes(content)
    assert vsi.upload(local, f"/vsis3/{BUCKET}/vsi/big.bin", chunk_bytes=3 * 1024 * 1024) == len(content)
    assert bucket.get_object(Bucket=BUCKET, Key="vsi/big.bin")["Body"].read() == content
    assert vsi.size(f"/vsis3/{BUCKET}/vsi/big.bin") == len(content)

    vsi.unlink(path)
    vsi.unlink(path)  # missing is fine by default
    assert not vsi.exists(path) and "vsi/a.json" not in keys(bucket, "vsi/")
    with pytest.raises(OutputError, match="Cannot delete"):
        vsi.unlink(path, missing_ok=False)


def test_vsi_mistakes_are_one_sentence_geolift_errors(s3, tmp_path):
    with pytest.raises(InputError, match=r"Cannot open /vsis3/geolift-test/none\.json \(not found\)"):
        vsi.read_bytes(f"/vsis3/{BUCKET}/none.json")
    assert vsi.size(f"/vsis3/{BUCKET}/none.json") is None
    with pytest.raises(OutputError, match="Cannot write /vsis3/no-such-bucket/x.json"):
        vsi.write_bytes("/vsis3/no-such-bucket/x.json", b"{}")
    (tmp_path / "x.bin").write_bytes(b"x" * 100)
    with pytest.raises(OutputError, match="Cannot upload .*x.bin to /vsis3/no-such-bucket/x.bin"):
        vsi.upload(tmp_path / "x.bin", "/vsis3/no-such-bucket/x.bin")
    with pytest.raises(OutputError, match="Cannot read .*missing.bin to upload it"):
        vsi.upload(tmp_path / "missing.bin", f"/vsis3/{BUCKET}/x.bin")
    with pytest.raises(OutputError, match="read-only"):
        vsi.write_bytes("/vsicurl/https://example.com/x.json", b"{}")


# ---------------------------------------------------------------------------------------------------- manifests


def test_object_storage_outdirs_and_output_cells_become_vsi_paths(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", ["a/x.tif,b/y.tif,,", "a/z.tif,b/y.tif,,sub/z_out.tif"],
                              header="hsi,msi,sensor,output")
    jobs = read_manifest(manifest, "s3://bucket/fused")
    assert [j.output for j in jobs] == ["/vsis3/bucket/fused/x_fused.tif", "/vsis3/bucket/fused/sub/z_out.tif"]
    assert [j.name for j in jobs] == ["x_fused", "sub/z_out"]
    assert jobs[0].qa_output == "/vsis3/bucket/fused/x_fused_qa.tif"
    assert read_manifest(manifest, "/vsis3/bucket/fused/")[0].output == "/vsis3/bucket/fused/x_fused.tif"

    hsi_dir, msi_dir = tmp_path / "enmap", tmp_path / "s2"
    hsi_dir.mkdir()
    msi_dir.mkdir()
    hsi, msi = write_wald_pair(tmp_path, "ENMAP_20220724_hsi.tif", "S2_20220724_msi.tif", col=0, seed=1)
    hsi.rename(hsi_dir / hsi.name)
    msi.rename(msi_dir / msi.name)
    jobs, unmatched = pair_folders(hsi_dir, msi_dir, "gs://bucket/fused/")
    assert [(j.name, j.output) for j in jobs] == [("ENMAP_20220724_hsi_fused",
                                                   "/vsigs/bucket/fused/ENMAP_20220724_hsi_fused.tif")]
    assert not unmatched

    bad = write_manifest(tmp_path / "bad.csv", ["a/x.tif,b/y.tif,https://example.com/out.tif"], header="hsi,msi,output")
    with pytest.raises(BatchError, match=r"line 2: Output /vsicurl/https://example.com/out.tif is read-only"):
        read_manifest(bad, tmp_path)
    with pytest.raises(BatchError, match="read-only"):
        read_manifest(manifest, "https://example.com/fused")


def test_local_folders_of_dead_workers_on_this_machine_are_removed(tmp_path):
    """A worker killed mid-job leaves its local folder; the next job on the machine removes it, and only it."""
    from geolift.batch.object_storage import _stage_tag, remove_abandoned_stages

    dead = tmp_path / f"{STAGE_PREFIX}{_stage_tag(2**22 + 12345)}-abc_12"  # above Linux's largest pid
    alive = tmp_path / f"{STAGE_PREFIX}{_stage_tag(os.getpid())}-xyz"
    elsewhere = tmp_path / f"{STAGE_PREFIX}{2**22 + 12345}.another_host-abc"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
        (folder / "x.tif").write_bytes(b"x")
    remove_abandoned_stages(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])


# ---------------------------------------------------------------------------------------------------- batches


@pytest.mark.slow
def test_batch_to_s3_equals_local_resumes_and_redoes_a_job_without_sidecar(s3, client, pair, tmp_path,
                                                                          monkeypatch):
    bucket, tmpdir, log = s3
    folder, files = pair
    manifest = write_manifest(folder / "s3.csv", [wald_row(files)])

    # the same job written locally, on the same cluster
    local = tmp_path / "local"
    report = run_batch(read_manifest(manifest, local), client, BatchSettings(qa=True))
    assert report.summary()["done"] == 1, report.to_dict()

    monkeypatch.chdir(tmp_path)  # a remote OUTDIR keeps the report and the log in the current folder
    options = ["--scheduler", client.scheduler.address, "--qa", "--stac"]
    result = cli(str(manifest), "-o", f"s3://{BUCKET}/out", *options)
    assert result.exit_code == 0, result.output
    output = f"/vsis3/{BUCKET}/out/wald_s3_hsi_fused.tif"
    # output, QA layer, Item and, last, the sidecar are uploaded (one PUT each), then the Collection
    assert [w for w in writes(log, "out/") if ".geolift-probe-" not in w[1]] == UPLOADS
    uploaded = keys(bucket, "out/")
    assert set(uploaded) == {key for _, key in UPLOADS}, uploaded
    for name in ("wald_s3_hsi_fused.tif", "wald_s3_hsi_fused_qa.tif"):
        with rasterio.open(f"/vsis3/{BUCKET}/out/{name}") as remote, rasterio.open(local / name) as here:
            differ = {k: v for k, v in remote.profile.items() if str(here.profile.get(k)) != str(v)}  # NaN nodata
            assert not differ and remote.descriptions == here.descriptions
            np.testing.assert_array_equal(remote.read(), here.read())
    assert read_all(output).shape[0] > 100  # the fused cube itself
    sidecar = json.loads(bucket.get_object(Bucket=BUCKET, Key="out/wald_s3_hsi_fused.tif.geolift.json")["Body"].read())
    assert sidecar["fingerprint"]["output"] == output and sidecar["hash"]
    item = json.loads(vsi.read_bytes(f"/vsis3/{BUCKET}/out/wald_s3_hsi_fused.stac.json"))
    assert item["assets"]["data"]["href"] == "./wald_s3_hsi_fused.tif"
    assert item["assets"]["qa"]["href"] == "./wald_s3_hsi_fused_qa.tif"
    assert {link["href"] for link in item["links"] if link["rel"] == "derived_from"} == {str(f) for f in files}
    assert {link["href"] for link in item["links"] if link["rel"] == "collection"} == {
        f"s3://{BUCKET}/out/collection.json"}
    collection = json.loads(vsi.read_bytes(f"/vsis3/{BUCKET}/out/collection.json"))
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == [
        f"s3://{BUCKET}/out/wald_s3_hsi_fused.stac.json"]
    assert collection["extent"]["spatial"]["bbox"] == [item["bbox"]]
    rows = list(csv.DictReader(open(tmp_path / "batch_report.csv", newline="")))
    assert [(r["status"], r["output"]) for r in rows] == [("done", output)]
    assert "Uploaded 4 file(s)" in (tmp_path / "batch.log").read_text()
    assert not stages(tmpdir)  # the worker's local job folder is gone

    # resume: the client reads the remote sidecar and skips the job; only the Item (made again from the output)
    # and the Collection are written
    before = len(writes(log, "out/"))
    result = cli(str(manifest), "-o", f"/vsis3/{BUCKET}/out", *options)
    assert result.exit_code == 0, result.output
    assert "0 done, 1 skipped" in result.output
    assert [w for w in writes(log, "out/")[before:] if ".geolift-probe-" not in w[1]] == UPLOADS[2:3] + UPLOADS[4:]
    assert {k: v for k, v in keys(bucket, "out/").items() if "stac" not in k} == {
        k: v for k, v in uploaded.items() if "stac" not in k}

    # an output without its sidecar (a run killed between two uploads) is not trusted: the job runs again
    bucket.delete_object(Bucket=BUCKET, Key="out/wald_s3_hsi_fused.tif.geolift.json")
    result = cli(str(manifest), "-o", f"s3://{BUCKET}/out", *options)
    assert result.exit_code == 0, result.output
    assert "1 done, 0 skipped" in result.output
    assert set(keys(bucket, "out/")) == set(uploaded)

    # redoing a finished job deletes its sidecar before the first upload: it never vouches for a partial set
    before = len(writes(log, "out/"))
    result = cli(str(manifest), "-o", f"s3://{BUCKET}/out", *options, "--force")
    assert result.exit_code == 0, result.output
    assert [w for w in writes(log, "out/")[before:] if ".geolift-probe-" not in w[1]] == [
        ("DELETE", "out/wald_s3_hsi_fused.tif.geolift.json"), *UPLOADS]
    np.testing.assert_array_equal(read_all(output), read_all(local / "wald_s3_hsi_fused.tif"))


@pytest.mark.slow
def test_a_failing_job_uploads_nothing(s3, client, pair, tmp_path, monkeypatch):
    bucket, tmpdir, log = s3
    folder, files = pair
    broken = folder / "broken_s3_hsi.tif"
    broken.write_bytes(b"II*\x00 not a GeoTIFF")
    manifest = write_manifest(folder / "fail.csv", [f"{broken},{files[1]},sentinel2a,B2 B3 B4 B8,{STEPS},1,"])
    monkeypatch.chdir(tmp_path)
    result = cli(str(manifest), "-o", f"s3://{BUCKET}/failed", "--scheduler", client.scheduler.address, "--qa")
    assert result.exit_code == JobsFailedError.exit_code, result.output
    assert keys(bucket, "failed/") == {}
    assert all(".geolift-probe-" in key for _, key in writes(log, "failed/"))  # only the folder check's probe
    assert not stages(tmpdir)
    assert "Traceback" not in result.output


def test_an_unwritable_bucket_stops_the_batch_before_any_job(s3, pair, tmp_path, monkeypatch):
    folder, files = pair
    manifest = write_manifest(folder / "nobucket.csv", [wald_row(files)])
    monkeypatch.chdir(tmp_path)
    result = cli(str(manifest), "-o", "s3://no-such-bucket/out", "--scheduler", "tcp://127.0.0.1:1")
    assert result.exit_code == BatchError.exit_code, result.output
    assert "no-such-bucket/out cannot be written" in result.output and "Traceback" not in result.output
