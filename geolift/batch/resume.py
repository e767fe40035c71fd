"""Resuming: what an output was made from (a fingerprint in a sidecar file), so a rerun skips what is up to date.

After an output is renamed into place, ``<output>.geolift.json`` records a hash of the job's inputs and
parameters (:func:`job_fingerprint`). A later run skips a job whose output exists and whose sidecar hash matches,
and redoes everything else. Input files are identified by path, size and modification time of the file and its
companions (cheap for multi-GB scenes); custom SRF CSVs by a SHA-256 of their content; URLs by the URL alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from geolift import __version__
from geolift.batch.jobs import BatchJob
from geolift.errors import InputError
from geolift.io import vsi
from geolift.io.paths import NEW_FILE_MODE, companion_files, is_remote
from geolift.scratch import scratch_prefix

__all__ = [
    "SIDECAR_FORMAT", "SIDECAR_SUFFIX", "is_complete", "job_fingerprint", "job_hash", "read_sidecar",
    "remove_leftovers", "sidecar_path", "write_json_atomic", "write_text_atomic",
]

log = logging.getLogger("geolift")

SIDECAR_SUFFIX = ".geolift.json"
SIDECAR_FORMAT = "geolift-batch/1"

#: FuseOptions fields that do not change the output file (so they stay out of the job hash).
_RESULT_NEUTRAL_OPTIONS = ("overwrite", "num_threads", "scratch")  # scratch: the same bits either way
#: FuseOptions fields added after outputs were first fingerprinted: left out of the hash at their defaults, so an
#: output made before they existed is still up to date (any other value is hashed like every option).
_OMITTED_AT_DEFAULT = {"cog": False, "creation_options": []}


def _input_stamp(path: str) -> dict[str, Any]:
    if is_remote(path):
        return {"path": path}
    p = Path(path)
    if not p.exists():
        return {"path": path, "missing": True}
    files = []
    for f in companion_files(p):
        st = f.stat()
        files.append([f.name, st.st_size, st.st_mtime_ns])
    return {"path": path, "files": files}


def _content_hash(path: str) -> str:
    if is_remote(path) or not Path(path).is_file():
        return f"unreadable:{path}"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def job_fingerprint(job: BatchJob, torch_threads: int = 1, qa: bool = False) -> dict[str, Any]:
    """Everything the output depends on: input stamps, result-relevant options, threads, version.

    Local inputs are stamped by path, size and modification time (ns) of the file and its
    companions (ENVI header, ``.aux.xml``); a custom SRF CSV by the SHA-256 of its content; URLs by
    the URL itself.
    """
    options = {k: v for k, v in job.options.to_dict().items()
               if k not in _RESULT_NEUTRAL_OPTIONS and not (k in _OMITTED_AT_DEFAULT and v == _OMITTED_AT_DEFAULT[k])}
    return {
        "geolift": __version__,
        "output": job.output,
        "hsi": _input_stamp(job.hsi),
        "msi": [_input_stamp(m) for m in job.msi],
        "srf_sha256": _content_hash(job.options.srf_path) if job.options.srf_path else None,
        "options": options,
        "torch_threads": int(torch_threads),
        "qa": bool(qa),
    }


def job_hash(fingerprint: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a fingerprint."""
    text = json.dumps(fingerprint, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sidecar_path(output: str | Path) -> Path:
    """``<output>.geolift.json``: what produced the output, read to decide whether to skip the job."""
    return Path(str(output) + SIDECAR_SUFFIX)


def read_sidecar(output: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``output`` (local, or on object storage through GDAL), or None when missing or not one."""
    path = sidecar_path(output)
    try:
        data = json.loads(vsi.read_bytes(path) if vsi.is_vsi_path(path) else path.read_text())
    except (OSError, ValueError, InputError):
        return None
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def _is_file(path: str) -> bool:
    return vsi.exists(path) if vsi.is_vsi_path(path) else Path(path).is_file()


def is_complete(job: BatchJob, digest: str, qa: bool = False) -> bool:
    """True when the job's output (and with ``qa`` its QA layer) exists and its sidecar records the same hash."""
    if not _is_file(job.output) or (qa and not _is_file(job.qa_output)):
        return False
    sidecar = read_sidecar(job.output)
    return sidecar is not None and sidecar.get("hash") == digest


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file through a temporary name, with normal permissions (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def remove_leftovers(output: Path) -> None:
    """Remove the hidden temporary files and scratch folders (:func:`geolift.fuse.scratch_space`) an interrupted
    earlier run left next to this output: a worker killed mid-job cleans nothing up."""
    for leftover in output.parent.glob(f".{output.name}.geolift-tmp-*"):
        try:
            leftover.unlink()
            log.info("Removed %s, left over from an interrupted run.", leftover.name)
        except OSError:
            pass
    for leftover in output.parent.glob(f"{scratch_prefix(output)}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("Removed %s, the scratch folder of an interrupted run.", leftover.name)
