"""Run the geolift command line out of process and follow its progress.

This module imports neither QGIS nor geolift: QGIS's Python is usually not the
Python environment geolift (and torch) is installed in, so the plugin talks to
geolift only through its command line contract (docs/architecture.md):

* ``geolift: progress <pct>% <stage>`` lines on stderr with ``--progress plain``;
* ``geolift: error: <sentence>`` on stderr and a non-zero exit code on failure;
* ``geolift: warning: <sentence>`` on stderr for what the user should know (shown as a QGIS warning);
* the output GeoTIFF is written atomically, so a stopped run leaves no file.

Keeping the process handling free of QGIS lets it be tested with plain pytest.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Name of the JSON file ``geolift qgis install`` writes next to the plugin's modules.
CONFIG_FILE_NAME = "geolift_config.json"

#: Environment variable that overrides every other way of finding geolift.
EXECUTABLE_ENV_VAR = "GEOLIFT_EXECUTABLE"

#: The first SENSOR choice: build Gaussian SRFs from the MSI's wavelength/FWHM metadata.
FROM_METADATA = "from MSI metadata"

_PROGRESS_LINE = re.compile(r"^geolift: progress\s+(?P<pct>[0-9]+(?:\.[0-9]*)?)%\s*(?P<stage>.*)$")
_ERROR_PREFIX = "geolift: error: "
_WARNING_PREFIX = "geolift: warning: "

# How long a stopped geolift gets to clean up after Ctrl-C before it is terminated, then killed.
_INTERRUPT_GRACE_S = 10.0
_TERMINATE_GRACE_S = 5.0

# geolift.io writes into a hidden sibling ".<name>.geolift-tmp-XXXX" and renames it at the end;
# a process killed before it could clean up (Windows has no Ctrl-C for it) leaves one behind.
_PARTIAL_PATTERN = ".{name}.geolift-tmp-*"


class GeoliftNotFound(Exception):
    """No geolift command could be found; the message says where we looked."""


@dataclass
class GeoliftCommand:
    """How to start geolift: the argument vector prefix and where it came from."""

    argv: list[str]
    source: str
    pythonpath: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{' '.join(self.argv)} (from {self.source})"


@dataclass
class RunResult:
    """What a finished geolift run left behind."""

    returncode: int
    canceled: bool
    errors: list[str]
    last_lines: list[str]

    @property
    def failure_message(self) -> str:
        """geolift's own error sentence, or the tail of its output when it crashed."""
        if self.errors:
            return self.errors[-1]
        tail = " | ".join(line for line in self.last_lines[-3:] if line.strip())
        detail = f": {tail}" if tail else ""
        return f"geolift stopped with exit code {self.returncode}{detail}"


# --------------------------------------------------------------------------- config


def load_config(plugin_dir: str | os.PathLike) -> dict:
    """Read what ``geolift qgis install`` recorded; an absent or broken file gives ``{}``."""
    path = Path(plugin_dir) / CONFIG_FILE_NAME
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def sensor_choices(config: Mapping) -> list[str]:
    """SENSOR options: 'from MSI metadata' first, then the recorded sensor names."""
    names = [str(name) for name in config.get("sensors", []) if str(name).strip()]
    return [FROM_METADATA] + [name for name in names if name != FROM_METADATA]


# --------------------------------------------------------------------------- finding geolift


def _command_from_text(text: str, source: str, search_path: str | None) -> GeoliftCommand | None:
    """Turn a path or a command line (``/env/bin/python -m geolift``) into a command, if it exists."""
    text = text.strip()
    if not text:
        return None
    if Path(text).is_file():
        return GeoliftCommand([os.path.abspath(text)], source)
    try:
        parts = shlex.split(text, posix=os.name != "nt")
    except ValueError:
        return None
    if not parts:
        return None
    program = parts[0] if Path(parts[0]).is_file() else shutil.which(parts[0], path=search_path)
    if program is None:
        return None
    return GeoliftCommand([program] + parts[1:], source)


def resolve_command(
    config: Mapping,
    setting: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> GeoliftCommand:
    """Find geolift: env var, then the QGIS setting, then the install record, then PATH.

    Raises :class:`GeoliftNotFound` with a sentence naming every place tried, so the
    QGIS log tells the user exactly what to fix.
    """
    environ = os.environ if environ is None else environ
    tried: list[str] = []

    env_value = environ.get(EXECUTABLE_ENV_VAR, "")
    if env_value.strip():
        command = _command_from_text(
            env_value, f"the {EXECUTABLE_ENV_VAR} environment variable", environ.get("PATH")
        )
        if command:
            return command
        tried.append(f"{EXECUTABLE_ENV_VAR}={env_value!r} (not found)")

    if setting and setting.strip():
        command = _command_from_text(setting, "the geolift executable setting of Processing", environ.get("PATH"))
        if command:
            return command
        tried.append(f"Processing setting {setting!r} (not found)")

    recorded = config.get("command")
    if isinstance(recorded, list) and recorded:
        recorded = [str(part) for part in recorded]
        if Path(recorded[0]).is_file():
            pythonpath = [str(p) for p in config.get("pythonpath", []) if Path(str(p)).is_dir()]
            return GeoliftCommand(recorded, "geolift qgis install", pythonpath)
        tried.append(f"recorded command {' '.join(recorded)!r} (its program no longer exists)")

    on_path = shutil.which("geolift", path=environ.get("PATH"))
    if on_path:
        return GeoliftCommand([on_path], "PATH")
    tried.append("'geolift' on PATH (not found)")

    raise GeoliftNotFound(
        "Cannot find the geolift executable; tried "
        + "; ".join(tried)
        + f". Run 'geolift qgis install' from the Python environment geolift is installed in, "
        f"or set {EXECUTABLE_ENV_VAR} (or Settings > Options > Processing > Providers > geolift) "
        "to the geolift program."
    )


def child_environment(command: GeoliftCommand, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment geolift runs in: QGIS's own Python settings must not leak into it."""
    env = dict(os.environ if environ is None else environ)
    # QGIS (OSGeo4W, the macOS bundle, conda) points PYTHONHOME/PYTHONPATH at its own Python;
    # another interpreter would then import the wrong standard library or packages.
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    if command.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(command.pythonpath)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


# --------------------------------------------------------------------------- arguments and output


def fuse_arguments(
    hsi: str,
    msi: str,
    output: str,
    *,
    sensor: str | None = None,
    srf_file: str | None = None,
    bands: str | None = None,
    steps: int | None = None,
    members: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    harmonize: bool = False,
    drop_uncovered: bool = False,
    qa: str | None = None,
    cog: bool = False,
) -> list[str]:
    """The ``geolift fuse`` arguments for one Processing run (without the program itself)."""
    args = ["fuse", hsi, msi, "--output", output, "--overwrite", "--progress", "plain"]
    if qa:
        args += ["--qa", qa]
    if sensor and sensor != FROM_METADATA:
        args += ["--sensor", sensor]
    if srf_file:
        args += ["--srf", srf_file]
    if bands and bands.strip():
        args += ["--bands", ",".join(part.strip() for part in bands.split(",") if part.strip())]
    if steps is not None:
        args += ["--steps", str(int(steps))]
    if members is not None:
        args += ["--members", str(int(members))]
    if seed is not None:
        args += ["--seed", str(int(seed))]
    if device:
        args += ["--device", device]
    if harmonize:
        args.append("--harmonize")
    if drop_uncovered:
        args.append("--drop-uncovered")
    if cog:
        args.append("--cog")
    return args


def parse_line(line: str) -> tuple:
    """Classify one output line: ``("progress", pct, stage)``, ``("error", sentence)``, ``("warning", sentence)``
    or ``("info", line)``."""
    line = line.rstrip("\r\n")
    match = _PROGRESS_LINE.match(line)
    if match:
        return ("progress", min(100.0, float(match.group("pct"))), match.group("stage").strip())
    if line.startswith(_ERROR_PREFIX):
        return ("error", line[len(_ERROR_PREFIX):].strip())
    if line.startswith(_WARNING_PREFIX):
        return ("warning", line[len(_WARNING_PREFIX):].strip())
    return ("info", line)


def command_line(argv: Sequence[str]) -> str:
    """One line a user can paste into a terminal to repeat the run."""
    if os.name == "nt":
        return subprocess.list2cmdline(list(argv))
    return shlex.join(argv)


# --------------------------------------------------------------------------- running


def _pump_lines(stream, lines: queue.Queue[str | None]) -> None:
    """Copy a pipe into a queue line by line, then a ``None`` at end of stream."""
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode("utf-8", errors="replace"))
    finally:
        lines.put(None)


def partial_outputs(output: str | os.PathLike) -> set[Path]:
    """geolift's temporary files for ``output`` that exist right now."""
    output = Path(output)
    return set(output.parent.glob(_PARTIAL_PATTERN.format(name=output.name)))


def remove_new_partial_outputs(output: str | os.PathLike, before: set[Path]) -> list[Path]:
    """Delete temporary files a stopped run left for ``output`` (not ones another run owns)."""
    removed = []
    for path in sorted(partial_outputs(output) - before):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _stop(process: subprocess.Popen, interrupt_grace_s: float) -> None:
    """Stop geolift the way Ctrl-C does, so it removes its temporary output; force it if it hangs."""
    if process.poll() is not None:
        return
    if os.name != "nt":
        process.send_signal(signal.SIGINT)
        try:
            process.wait(interrupt_grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    process.terminate()
    try:
        process.wait(_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_geolift(
    command: GeoliftCommand,
    args: Sequence[str],
    *,
    on_progress: Callable[[float, str], None] = lambda pct, stage: None,
    on_info: Callable[[str], None] = lambda line: None,
    on_error: Callable[[str], None] = lambda sentence: None,
    on_warning: Callable[[str], None] | None = None,
    is_canceled: Callable[[], bool] = lambda: False,
    poll_interval: float = 0.2,
    interrupt_grace_s: float = _INTERRUPT_GRACE_S,
    environ: Mapping[str, str] | None = None,
) -> RunResult:
    """Run geolift, feeding its output lines to the callbacks; stop it when ``is_canceled()``.

    stdout and stderr share one pipe read by a thread, so a chatty child can never block
    on a full pipe and cancel is noticed within ``poll_interval`` even when geolift is quiet.
    """
    kwargs = {}
    if os.name == "nt":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    try:
        process = subprocess.Popen(
            list(command.argv) + list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_environment(command, environ),
            **kwargs,
        )
    except OSError as exc:
        raise GeoliftNotFound(f"Cannot start geolift ({command.describe()}): {exc}.") from exc

    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump_lines, args=(process.stdout, lines), daemon=True)
    reader.start()

    errors: list[str] = []
    last_lines: list[str] = []
    canceled = False
    finished_reading = False
    while not finished_reading:
        if not canceled and is_canceled():
            canceled = True
            _stop(process, interrupt_grace_s)
        try:
            line = lines.get(timeout=poll_interval)
        except queue.Empty:
            continue
        if line is None:
            finished_reading = True
            continue
        kind, *payload = parse_line(line)
        if kind == "progress":
            on_progress(payload[0], payload[1])
        elif kind == "error":
            errors.append(payload[0])
            on_error(payload[0])
        elif kind == "warning":
            if on_warning is not None:
                on_warning(payload[0])
            else:
                on_info(_WARNING_PREFIX + payload[0])
        elif payload[0].strip():
            last_lines = (last_lines + [payload[0]])[-10:]
            on_info(payload[0])

    returncode = process.wait()
    reader.join(timeout=1.0)
    process.stdout.close()
    return RunResult(returncode=returncode, canceled=canceled, errors=errors, last_lines=last_lines)
