"""QGIS integration: the plugin's process handling, install/uninstall, and real headless QGIS runs.

The tests marked ``qgis`` drive Debian's ``qgis_process.bin`` (QGIS 3.22) against a plugin
installed into a temporary profile; they skip only where that program does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geolift.errors import OutputError
from geolift.qgis_install import (
    CONFIG_FILE_NAME,
    PLUGIN_NAME,
    default_profile_dir,
    install_plugin,
    is_plugin_enabled,
    plugin_dir,
    settings_file,
    uninstall_plugin,
)
from geolift.qgis_plugin import runner

REPO = Path(__file__).resolve().parent.parent
HSI = REPO / "sample_data" / "enmap_sim_berlin_30m_177b.tif"
MSI = REPO / "sample_data" / "hymap_berlin_3p6m_4b.tif"
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")

needs_qgis = pytest.mark.skipif(
    not QGIS_PROCESS.exists(),
    reason=f"QGIS is not installed here ({QGIS_PROCESS} does not exist); .ci/run installs it with apt-get",
)


def write_script(path: Path, body: str) -> Path:
    """An executable Python script standing in for a program the plugin starts."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body), encoding="utf-8")
    path.chmod(0o755)
    return path


# A stand-in for `geolift fuse` that speaks the CLI contract: progress lines, an error line
# for the band name "BAD", and an atomic write like geolift.io's (hidden temporary file renamed
# at the end; Ctrl-C removes it, unless STUB_IGNORE_SIGINT makes it a process that must be killed).
STUB_GEOLIFT = """
import os, shutil, signal, sys, time
args = sys.argv[1:]
print("geolift: args " + " ".join(args), file=sys.stderr, flush=True)
print("geolift: warning: WorldView-3 band B1 (78% covered) lies partly outside the HSI.", file=sys.stderr, flush=True)
if "BAD" in args:
    print("geolift: error: MSI band BAD is not a band of sentinel2a.", file=sys.stderr)
    sys.exit(2)
if os.environ.get("STUB_IGNORE_SIGINT"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
output = args[args.index("--output") + 1]
partial = os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.geolift-tmp-{os.getpid()}")
open(partial, "wb").close()
delay = float(os.environ.get("STUB_DELAY", "0.01"))
try:
    for pct in range(0, 101, 5):
        stage = "read" if pct < 10 else ("train" if pct < 90 else "write")
        print(f"geolift: progress {pct:.1f}% {stage}", file=sys.stderr, flush=True)
        time.sleep(delay)
    shutil.copyfile(args[1], partial)
    os.replace(partial, output)
except KeyboardInterrupt:
    os.remove(partial)
    print("geolift: error: interrupted; no output was written.", file=sys.stderr)
    sys.exit(130)
"""


# --------------------------------------------------------------------------- runner (no QGIS)


def test_parse_line_classifies_progress_error_and_log_lines():
    assert runner.parse_line("geolift: progress 42.5% train\n") == ("progress", 42.5, "train")
    assert runner.parse_line("geolift: progress 100% write") == ("progress", 100.0, "write")
    assert runner.parse_line("geolift: error: The HSI has no wavelengths.") == ("error", "The HSI has no wavelengths.")
    assert runner.parse_line("geolift: reading HSI") == ("info", "geolift: reading HSI")
    assert runner.parse_line("geolift: warning: B1 is 78% covered.") == ("warning", "B1 is 78% covered.")


def test_fuse_arguments_follow_the_cli_contract():
    args = runner.fuse_arguments(
        "h.tif", "m.tif", "o.tif", sensor="sentinel2a", bands=" B2, B3 ,B4,B8 ", steps=300, members=2, seed=7,
        harmonize=True, drop_uncovered=True,
    )
    assert args[:3] == ["fuse", "h.tif", "m.tif"]
    assert args[args.index("--output") + 1] == "o.tif"
    assert {"--overwrite", "--harmonize", "--drop-uncovered"} <= set(args)
    assert args[args.index("--progress") + 1] == "plain"
    assert args[args.index("--sensor") + 1] == "sentinel2a"
    assert args[args.index("--bands") + 1] == "B2,B3,B4,B8"
    assert args[args.index("--steps") + 1] == "300" and args[args.index("--seed") + 1] == "7"
    assert args[args.index("--members") + 1] == "2"
    with_qa = runner.fuse_arguments("h.tif", "m.tif", "o.tif", qa="o_qa.tif")
    assert with_qa[with_qa.index("--qa") + 1] == "o_qa.tif"
    assert "--cog" in runner.fuse_arguments("h.tif", "m.tif", "o.tif", cog=True)
    from_metadata = runner.fuse_arguments("h.tif", "m.tif", "o.tif", sensor=runner.FROM_METADATA, bands="")
    assert not {"--sensor", "--bands", "--steps", "--members", "--harmonize", "--drop-uncovered", "--cog"} & set(
        from_metadata)


def test_sensor_choices_put_metadata_first():
    assert runner.sensor_choices({"sensors": ["sentinel2a", "landsat8"]}) == [
        runner.FROM_METADATA,
        "sentinel2a",
        "landsat8",
    ]
    assert runner.sensor_choices({}) == [runner.FROM_METADATA]


def test_resolve_command_prefers_env_then_setting_then_record_then_path(tmp_path):
    env_exe = write_script(tmp_path / "env-geolift", "")
    setting_exe = write_script(tmp_path / "setting-geolift", "")
    recorded_exe = write_script(tmp_path / "recorded-geolift", "")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path_exe = write_script(bin_dir / "geolift", "")
    config = {"command": [str(recorded_exe), "-m", "geolift"], "pythonpath": [str(tmp_path)]}
    environ = {"PATH": str(bin_dir), runner.EXECUTABLE_ENV_VAR: str(env_exe)}

    assert runner.resolve_command(config, str(setting_exe), environ).argv == [str(env_exe)]
    environ.pop(runner.EXECUTABLE_ENV_VAR)
    assert runner.resolve_command(config, str(setting_exe), environ).argv == [str(setting_exe)]
    recorded = runner.resolve_command(config, "", environ)
    assert recorded.argv == [str(recorded_exe), "-m", "geolift"] and recorded.pythonpath == [str(tmp_path)]
    assert runner.resolve_command({}, "", environ).argv == [str(path_exe)]
    # A command line with arguments works in the env var too (e.g. "/env/bin/python -m geolift").
    environ[runner.EXECUTABLE_ENV_VAR] = f"{sys.executable} -m geolift"
    assert runner.resolve_command({}, "", environ).argv == [sys.executable, "-m", "geolift"]


def test_resolve_command_says_where_it_looked_when_geolift_is_missing(tmp_path):
    config = {"command": [str(tmp_path / "gone" / "python"), "-m", "geolift"]}
    environ = {"PATH": str(tmp_path), runner.EXECUTABLE_ENV_VAR: str(tmp_path / "nope")}
    with pytest.raises(runner.GeoliftNotFound) as caught:
        runner.resolve_command(config, "", environ)
    message = str(caught.value)
    assert message.startswith("Cannot find the geolift executable")
    assert runner.EXECUTABLE_ENV_VAR in message and "gone" in message and "PATH" in message
    assert "geolift qgis install" in message


def test_child_environment_drops_qgis_python_settings():
    command = runner.GeoliftCommand(["geolift"], "test", pythonpath=["/src/geolift"])
    env = runner.child_environment(command, {"PYTHONHOME": "/qgis/python", "PYTHONPATH": "/qgis/lib", "X": "1"})
    assert "PYTHONHOME" not in env and env["PYTHONPATH"] == "/src/geolift" and env["X"] == "1"
    assert "PYTHONPATH" not in runner.child_environment(runner.GeoliftCommand(["g"], "t"), {"PYTHONPATH": "/q"})


def test_run_geolift_reports_progress_and_writes_output(tmp_path):
    stub = runner.GeoliftCommand([str(write_script(tmp_path / "geolift", STUB_GEOLIFT))], "test")
    output = tmp_path / "fused.tif"
    progress, infos, warnings = [], [], []
    result = runner.run_geolift(
        stub,
        runner.fuse_arguments(str(HSI), str(MSI), str(output)),
        on_progress=lambda pct, stage: progress.append((pct, stage)),
        on_info=infos.append,
        on_warning=warnings.append,
    )
    assert result.returncode == 0 and not result.canceled and result.errors == []
    assert warnings == ["WorldView-3 band B1 (78% covered) lies partly outside the HSI."]
    assert progress[0] == (0.0, "read") and progress[-1] == (100.0, "write")
    assert [pct for pct, _ in progress] == sorted(pct for pct, _ in progress)
    assert any(line.startswith("geolift: args fuse ") for line in infos)
    assert output.read_bytes() == HSI.read_bytes()


def test_run_geolift_passes_geolift_errors_verbatim(tmp_path):
    stub = runner.GeoliftCommand([str(write_script(tmp_path / "geolift", STUB_GEOLIFT))], "test")
    errors = []
    result = runner.run_geolift(
        stub,
        runner.fuse_arguments("h.tif", "m.tif", str(tmp_path / "o.tif"), sensor="sentinel2a", bands="BAD"),
        on_error=errors.append,
    )
    assert result.returncode == 2
    assert errors == ["MSI band BAD is not a band of sentinel2a."]
    assert result.failure_message == "MSI band BAD is not a band of sentinel2a."
    assert not (tmp_path / "o.tif").exists()


def test_run_geolift_failure_message_without_error_line_shows_the_tail(tmp_path):
    crash = write_script(tmp_path / "geolift", "import sys\nprint('Traceback: boom', file=sys.stderr)\nsys.exit(1)\n")
    result = runner.run_geolift(runner.GeoliftCommand([str(crash)], "test"), ["fuse"])
    assert result.failure_message == "geolift stopped with exit code 1: Traceback: boom"


def test_cancel_stops_geolift_and_leaves_no_output(tmp_path):
    stub = runner.GeoliftCommand([str(write_script(tmp_path / "geolift", STUB_GEOLIFT))], "test")
    output = tmp_path / "fused.tif"
    seen = []
    started = time.monotonic()
    result = runner.run_geolift(
        stub,
        runner.fuse_arguments(str(HSI), str(MSI), str(output)),
        on_progress=lambda pct, stage: seen.append(pct),
        is_canceled=lambda: len(seen) >= 3,
        environ={**os.environ, "STUB_DELAY": "0.5"},  # about 10 s if it were not stopped
    )
    assert result.canceled and result.returncode != 0
    assert time.monotonic() - started < 5
    assert list(tmp_path.glob("*fused.tif*")) == []  # neither the output nor the stub's partial file


def test_cancel_kills_a_geolift_that_ignores_ctrl_c_and_cleans_its_partial_file(tmp_path):
    stub = runner.GeoliftCommand([str(write_script(tmp_path / "geolift", STUB_GEOLIFT))], "test")
    output = tmp_path / "fused.tif"
    other_run = tmp_path / ".fused.tif.geolift-tmp-other"  # another run's file: must survive
    other_run.write_bytes(b"")
    before = runner.partial_outputs(output)
    assert before == {other_run}
    seen = []
    result = runner.run_geolift(
        stub,
        runner.fuse_arguments(str(HSI), str(MSI), str(output)),
        on_progress=lambda pct, stage: seen.append(pct),
        is_canceled=lambda: len(seen) >= 2,
        interrupt_grace_s=0.5,
        environ={**os.environ, "STUB_DELAY": "0.5", "STUB_IGNORE_SIGINT": "1"},
    )
    assert result.canceled and result.returncode != 0
    left = runner.partial_outputs(output) - before
    assert len(left) == 1  # killed before it could clean up
    assert runner.remove_new_partial_outputs(output, before) == sorted(left)
    assert runner.partial_outputs(output) == {other_run} and not output.exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell quoting")
def test_command_line_can_be_pasted_into_a_shell():
    line = runner.command_line(["/opt/my env/bin/geolift", "fuse", "a b.tif"])
    assert line == "'/opt/my env/bin/geolift' fuse 'a b.tif'"


@pytest.mark.slow
def test_canceling_a_real_geolift_while_it_writes_leaves_no_file(tmp_path):
    command = runner.GeoliftCommand([sys.executable, "-m", "geolift"], "test", pythonpath=[str(REPO)])
    output = tmp_path / "fused.tif"
    stages = []
    result = runner.run_geolift(
        command,
        runner.fuse_arguments(str(HSI), str(MSI), str(output), steps=30),
        on_progress=lambda pct, stage: stages.append(stage),
        is_canceled=lambda: "write" in stages,
    )
    assert "write" in stages and result.canceled and result.returncode != 0
    assert list(tmp_path.iterdir()) == []  # no output, no hidden temporary file


def test_missing_program_is_reported_as_not_found(tmp_path):
    with pytest.raises(runner.GeoliftNotFound, match="Cannot start geolift"):
        runner.run_geolift(runner.GeoliftCommand([str(tmp_path / "missing")], "test"), ["fuse"])


# --------------------------------------------------------------------------- install (no QGIS)


def test_install_copies_plugin_records_geolift_and_enables_it(tmp_path):
    profile = tmp_path / "profiles" / "default"
    ini = settings_file(profile)
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nprocessing=true\n\n[qgis]\nstyle=Fusion\n", encoding="utf-8")

    folder = install_plugin(profile, sensors=["sentinel2a", "landsat8"])

    assert folder == plugin_dir(profile) == profile / "python" / "plugins" / PLUGIN_NAME
    names = {path.name for path in folder.iterdir()}
    assert {"__init__.py", "metadata.txt", "plugin.py", "provider.py", "fuse_algorithm.py", "runner.py"} <= names
    assert not any(path.is_dir() for path in folder.iterdir())  # flat, no __pycache__
    assert "hasProcessingProvider=yes" in (folder / "metadata.txt").read_text()
    config = json.loads((folder / CONFIG_FILE_NAME).read_text())
    assert config["sensors"] == ["sentinel2a", "landsat8"]
    assert config["command"] == [os.path.abspath(sys.executable), "-m", "geolift"]
    assert Path(config["pythonpath"][0], "geolift", "__init__.py").is_file()
    assert CONFIG_FILE_NAME == runner.CONFIG_FILE_NAME
    assert is_plugin_enabled(profile)
    text = ini.read_text()
    assert "processing=true" in text and "style=Fusion" in text and text.count("[PythonPlugins]") == 1

    # Reinstalling replaces the copy and does not duplicate the setting.
    install_plugin(profile, command=["/opt/geolift/bin/geolift"], sensors=["landsat9"])
    assert json.loads((folder / CONFIG_FILE_NAME).read_text())["command"] == ["/opt/geolift/bin/geolift"]
    assert ini.read_text().count(f"{PLUGIN_NAME}=true") == 1

    assert uninstall_plugin(profile) == folder
    assert not folder.exists() and not is_plugin_enabled(profile)
    assert PLUGIN_NAME not in ini.read_text() and "processing=true" in ini.read_text()
    assert uninstall_plugin(profile) is None


def test_install_records_the_srf_library_sensors_by_default(tmp_path):
    from geolift import srf

    folder = install_plugin(tmp_path / "profile")
    config = json.loads((folder / CONFIG_FILE_NAME).read_text())
    assert config["sensors"] == srf.sensors() and "sentinel2a" in config["sensors"]


def test_install_refuses_to_replace_a_foreign_folder(tmp_path):
    foreign = plugin_dir(tmp_path)
    foreign.mkdir(parents=True)
    (foreign / "metadata.txt").write_text("[general]\nname=something else\n")
    with pytest.raises(OutputError, match="not the geolift plugin"):
        install_plugin(tmp_path, sensors=[])
    assert (foreign / "metadata.txt").exists()


def test_install_into_a_file_is_a_clear_error(tmp_path):
    not_a_folder = tmp_path / "profile"
    not_a_folder.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        install_plugin(not_a_folder, sensors=[])


def test_default_profile_follows_qgis_rules(tmp_path):
    linux = default_profile_dir({"HOME": "/home/ana"}, "linux")
    assert linux == Path("/home/ana/.local/share/QGIS/QGIS3/profiles/default")
    assert default_profile_dir({"HOME": "/Users/ana"}, "darwin") == Path(
        "/Users/ana/Library/Application Support/QGIS/QGIS3/profiles/default"
    )
    assert default_profile_dir({"APPDATA": "C:/Users/ana/AppData/Roaming"}, "win32") == Path(
        "C:/Users/ana/AppData/Roaming/QGIS/QGIS3/profiles/default"
    )
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profiles.ini").write_text("[core]\ndefaultProfile=work\n")
    assert default_profile_dir({"QGIS_CUSTOM_CONFIG_PATH": str(tmp_path)}, "linux") == tmp_path / "profiles" / "work"


def test_cli_install_and_uninstall(tmp_path):
    profile = tmp_path / "profile"
    for verb, expected in (("install", "installed the QGIS plugin"), ("uninstall", "removed the QGIS plugin")):
        done = subprocess.run(
            [sys.executable, "-m", "geolift", "qgis", verb, "--profile-dir", str(profile)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stderr
        assert plugin_dir(profile).exists() == (verb == "install")


# --------------------------------------------------------------------------- real QGIS


def qgis_env(tmp_path: Path) -> dict[str, str]:
    """Environment for qgis_process: headless, using the temporary settings root."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    skip = {runner.EXECUTABLE_ENV_VAR, "PYTHONHOME", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(tmp_path / "qgis")
    env["XDG_RUNTIME_DIR"] = str(runtime)
    # QGIS's embedded Python finds its standard library through the first `python3` on PATH;
    # the test's own interpreter (pyenv, venv) must not be that one.
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin", env.get("PATH", "")])
    return env


def qgis_process(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [str(QGIS_PROCESS), *args],
        env=env or qgis_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def qgis_profile(tmp_path: Path) -> Path:
    return tmp_path / "qgis" / "profiles" / "default"


@pytest.mark.slow
@pytest.mark.qgis
@needs_qgis
def test_qgis_process_loads_provider_and_lists_the_algorithm(tmp_path):
    install_plugin(qgis_profile(tmp_path))

    listed = qgis_process(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "geolift:fuse\tFuse hyperspectral and multispectral" in listed.stdout
    assert "Cannot find the geolift executable" not in listed.stderr

    helped = qgis_process(tmp_path, "help", "geolift:fuse")
    assert helped.returncode == 0, helped.stderr
    for name in ("HSI", "MSI", "SENSOR", "BANDS", "STEPS", "MEMBERS", "SEED", "DEVICE", "HARMONIZE",
                 "DROP_UNCOVERED", "COG", "OUTPUT"):
        assert f"\n{name}: " in helped.stdout
    assert "0: from MSI metadata" in helped.stdout and ": sentinel2a" in helped.stdout

    uninstall_plugin(qgis_profile(tmp_path))
    listed = qgis_process(tmp_path, "list")
    assert listed.returncode == 0 and "geolift:fuse" not in listed.stdout


@pytest.mark.qgis
@needs_qgis
def test_qgis_shows_progress_and_passes_arguments_to_a_stub_geolift(tmp_path):
    stub = write_script(tmp_path / "geolift", STUB_GEOLIFT)
    install_plugin(qgis_profile(tmp_path), command=[str(stub)], pythonpath=[], sensors=["sentinel2a"])
    output = tmp_path / "out.tif"
    done = qgis_process(
        tmp_path, "run", "geolift:fuse", "--", f"HSI={HSI}", f"MSI={MSI}", "SENSOR=sentinel2a", "BANDS=B2,B3,B4,B8",
        "STEPS=300", "MEMBERS=2", "SEED=3", "COG=true", f"OUTPUT={output}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # QGIS's console feedback draws the progress we parsed: ticks up to 100.
    assert "30...40...50...60" in done.stdout and "100 - done." in done.stdout
    assert "geolift: read" in done.stdout and "geolift: train" in done.stdout  # stages as progress text
    assert (
        f"geolift: args fuse {HSI} {MSI} --output {output} --overwrite --progress plain --sensor sentinel2a "
        "--bands B2,B3,B4,B8 --steps 300 --members 2 --seed 3 --cog" in done.stdout
    )
    assert "geolift: warning: WorldView-3 band B1 (78% covered)" in done.stdout + done.stderr  # a QGIS warning
    assert output.read_bytes() == HSI.read_bytes()


@pytest.mark.slow
@pytest.mark.qgis
@needs_qgis
def test_qgis_says_clearly_when_geolift_cannot_be_found(tmp_path):
    install_plugin(qgis_profile(tmp_path), command=[str(tmp_path / "removed-env" / "bin" / "python")], sensors=[])
    env = qgis_env(tmp_path)
    env["PATH"] = "/usr/bin:/bin"  # no geolift script there
    listed = qgis_process(tmp_path, "list", env=env)
    assert "geolift:fuse" in listed.stdout  # still listed, so the user finds it and the message
    assert "Cannot find the geolift executable" in listed.stderr

    output = tmp_path / "out.tif"
    done = qgis_process(tmp_path, "--json", "run", "geolift:fuse", "--", f"HSI={HSI}", f"MSI={MSI}",
                        f"OUTPUT={output}", env=env)
    assert done.returncode != 0
    assert "Cannot find the geolift executable" in done.stderr and "GEOLIFT_EXECUTABLE" in done.stderr
    assert not output.exists()


@pytest.mark.slow
@pytest.mark.qgis
@needs_qgis
def test_qgis_reports_geolift_errors_verbatim_and_writes_nothing(tmp_path):
    install_plugin(qgis_profile(tmp_path))
    output = tmp_path / "out.tif"
    # Sentinel-2 B1 (443 nm) lies below the EnMAP simulation's first band (460 nm).
    done = qgis_process(
        tmp_path, "--json", "run", "geolift:fuse", "--", f"HSI={HSI}", f"MSI={MSI}", "SENSOR=sentinel2a",
        "BANDS=B1,B2,B3,B4", "STEPS=20", f"OUTPUT={output}",
    )
    assert done.returncode != 0
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("geolift: error: ")]
    assert len(error_lines) == 1 and "B1" in error_lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.glob("*out.tif*")) == []  # no output, no hidden temporary file


@pytest.mark.qgis
@pytest.mark.slow
@needs_qgis
def test_qgis_fuses_the_sample_pair_end_to_end(tmp_path):
    install_plugin(qgis_profile(tmp_path))
    output = tmp_path / "fused.tif"
    done = qgis_process(
        tmp_path, "--json", "run", "geolift:fuse", "--", f"HSI={HSI}", f"MSI={MSI}", "STEPS=150", "SEED=1",
        "COG=true", f"OUTPUT={output}",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert [path.name for path in tmp_path.glob("*fused.tif*")] == ["fused.tif"]  # no temporary left
    report = json.loads(done.stdout)
    assert report["results"]["OUTPUT"] == str(output)
    assert report["inputs"]["STEPS"] == "150"

    with rasterio.open(MSI) as msi, rasterio.open(HSI) as hsi, rasterio.open(output) as fused:
        assert fused.crs == msi.crs
        assert fused.transform.almost_equals(msi.transform) and fused.shape == msi.shape
        assert fused.count == hsi.count == 177
        assert fused.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and fused.overviews(1)  # the COG parameter
        fused_nm = np.array([float(fused.tags(b)["wavelength"]) for b in range(1, fused.count + 1)])
        hsi_nm = np.array([float(hsi.tags(b)["wavelength"]) for b in range(1, hsi.count + 1)])
        np.testing.assert_allclose(fused_nm, hsi_nm, atol=1e-3)
        assert all(fused.descriptions)
        sample = fused.read(50, window=((200, 264), (200, 264)), masked=True)
        assert np.isfinite(sample.compressed()).all() and sample.count() > 0 and float(sample.std()) > 0
