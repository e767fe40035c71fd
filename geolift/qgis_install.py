"""Install the geolift QGIS plugin into a QGIS user profile (the library side of ``geolift qgis``).

A QGIS profile folder (e.g. ``~/.local/share/QGIS/QGIS3/profiles/default``) holds Python
plugins in ``python/plugins/<name>/`` and its settings in ``QGIS/QGIS3.ini``. QGIS and
``qgis_process`` load a Processing plugin only when ``[PythonPlugins] <name>=true`` is set
there and its ``metadata.txt`` says ``hasProcessingProvider=yes``; installing therefore
copies the plugin, records how to start *this* geolift (QGIS's own Python is usually
another environment, without torch) plus the sensor list, and enables it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from configparser import ConfigParser
from pathlib import Path

from geolift.errors import OutputError

#: Folder (and Python module) name of the plugin inside the profile.
PLUGIN_NAME = "geolift_qgis"

#: JSON record the plugin reads at load time; must match ``qgis_plugin/runner.py``.
CONFIG_FILE_NAME = "geolift_config.json"

_PLUGIN_SOURCE = Path(__file__).resolve().parent / "qgis_plugin"
_SETTINGS_SECTION = "PythonPlugins"


# --------------------------------------------------------------------------- where


def qgis_settings_root(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """The folder holding QGIS 3's ``profiles/``, as QGIS itself picks it on this OS."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    custom = environ.get("QGIS_CUSTOM_CONFIG_PATH", "").strip()
    if custom:
        return Path(custom)
    home = Path(environ.get("HOME") or Path.home())
    if platform.startswith("win"):
        base = Path(environ["APPDATA"]) if environ.get("APPDATA") else home / "AppData" / "Roaming"
    elif platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(environ["XDG_DATA_HOME"]) if environ.get("XDG_DATA_HOME") else home / ".local" / "share"
    return base / "QGIS" / "QGIS3"


def default_profile_dir(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """The profile QGIS opens by default (``profiles.ini`` ``defaultProfile``, else ``default``)."""
    profiles = qgis_settings_root(environ, platform) / "profiles"
    name = "default"
    parser = ConfigParser(interpolation=None)
    try:
        parser.read(profiles / "profiles.ini", encoding="utf-8")
        name = parser.get("core", "defaultProfile", fallback="default").strip() or "default"
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return profiles / name


def plugin_dir(profile_dir: str | os.PathLike) -> Path:
    """Where the plugin lives inside a profile."""
    return Path(profile_dir) / "python" / "plugins" / PLUGIN_NAME


def settings_file(profile_dir: str | os.PathLike) -> Path:
    """The profile's QSettings INI file, where plugins are enabled."""
    return Path(profile_dir) / "QGIS" / "QGIS3.ini"


# --------------------------------------------------------------------------- what to record


def geolift_command() -> tuple[list[str], list[str]]:
    """How QGIS should start this geolift: ``(argv, pythonpath)``.

    ``<this interpreter> -m geolift`` runs exactly the environment the installer ran in
    (venv, conda or system). The folder holding the ``geolift`` package is recorded as
    PYTHONPATH too, so a source checkout that was never pip-installed also works.
    """
    package_parent = Path(__file__).resolve().parent.parent
    # Not resolve(): a venv's python is a symlink, and following it would leave the venv.
    return [os.path.abspath(sys.executable), "-m", "geolift"], [str(package_parent)]


def _library_sensors() -> list[str]:
    from geolift import srf

    return list(srf.sensors())


# --------------------------------------------------------------------------- QGIS3.ini


def _set_ini_value(path: Path, section: str, key: str, value: str | None) -> None:
    """Set (or with ``None`` remove) one key of a QSettings INI file, leaving every other byte alone.

    ConfigParser would rewrite QSettings' escapes and key case, so edit the lines directly.
    """
    text = path.read_text(encoding="latin-1") if path.exists() else ""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    header = f"[{section}]"
    key_line = re.compile(rf"^\s*{re.escape(key)}\s*=")

    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        if value is None:
            return
        if lines and lines[-1].strip():
            lines.append("")
        lines += [header, f"{key}={value}"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        found = [i for i in range(start + 1, end) if key_line.match(lines[i])]
        for i in reversed(found):
            del lines[i]
        if value is not None:
            insert_at = found[0] if found else start + 1
            lines.insert(insert_at, f"{key}={value}")

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".geolift-{os.getpid()}.tmp")
    temporary.write_text(newline.join(lines) + newline, encoding="latin-1", newline="")
    os.replace(temporary, path)


def set_plugin_enabled(profile_dir: str | os.PathLike, enabled: bool) -> None:
    """Enable the plugin in the profile (or forget it), as QGIS's plugin manager would."""
    _set_ini_value(settings_file(profile_dir), _SETTINGS_SECTION, PLUGIN_NAME, "true" if enabled else None)


def is_plugin_enabled(profile_dir: str | os.PathLike) -> bool:
    """True when the profile's settings enable the plugin."""
    path = settings_file(profile_dir)
    if not path.exists():
        return False
    in_section = False
    for line in path.read_text(encoding="latin-1").splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_section = stripped == f"[{_SETTINGS_SECTION}]"
        elif in_section and "=" in stripped:
            key, _, value = stripped.partition("=")
            if key.strip() == PLUGIN_NAME:
                return value.strip().lower() == "true"
    return False


# --------------------------------------------------------------------------- install / uninstall


def _is_geolift_plugin(folder: Path) -> bool:
    try:
        return "name=geolift" in (folder / "metadata.txt").read_text(encoding="utf-8")
    except OSError:
        return False


def _write_plugin_files(target: Path, config: dict, version: str) -> None:
    target.mkdir(parents=True)
    for source in sorted(_PLUGIN_SOURCE.glob("*.py")):
        shutil.copy2(source, target / source.name)
    metadata = (_PLUGIN_SOURCE / "metadata.txt").read_text(encoding="utf-8")
    metadata = re.sub(r"(?m)^version=.*$", f"version={version}", metadata)
    (target / "metadata.txt").write_text(metadata, encoding="utf-8")
    (target / CONFIG_FILE_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def install_plugin(
    profile_dir: str | os.PathLike | None = None,
    *,
    command: Sequence[str] | None = None,
    pythonpath: Sequence[str] | None = None,
    sensors: Sequence[str] | None = None,
) -> Path:
    """Copy the plugin into ``profile_dir`` (default: QGIS's default profile), record geolift, enable it.

    ``command``/``pythonpath`` default to this interpreter's geolift (:func:`geolift_command`),
    ``sensors`` to the SRF library's sensors. Reinstalling replaces an earlier copy.
    Returns the plugin folder. Raises :class:`OutputError` when the profile cannot be written.
    """
    profile = Path(profile_dir).expanduser() if profile_dir is not None else default_profile_dir()
    if profile.exists() and not profile.is_dir():
        raise OutputError(f"The QGIS profile folder {profile} is a file, not a folder.")
    if command is None:
        command, default_path = geolift_command()
        pythonpath = default_path if pythonpath is None else pythonpath
    from geolift import __version__ as version

    config = {
        "geolift_version": version,
        "command": [str(part) for part in command],
        "pythonpath": [str(path) for path in (pythonpath or [])],
        "sensors": list(_library_sensors() if sensors is None else sensors),
    }

    target = plugin_dir(profile)
    if target.exists() and not _is_geolift_plugin(target):
        raise OutputError(f"{target} exists but is not the geolift plugin; remove it or choose another profile.")
    staging = target.with_name(f".{PLUGIN_NAME}.installing-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        _write_plugin_files(staging, config, version)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        set_plugin_enabled(profile, True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = exc.strerror or str(exc)
        raise OutputError(f"Cannot install the QGIS plugin into {profile}: {reason}.") from None
    return target


def uninstall_plugin(profile_dir: str | os.PathLike | None = None) -> Path | None:
    """Remove the plugin and its enabled flag from the profile; returns the removed folder or None."""
    profile = Path(profile_dir).expanduser() if profile_dir is not None else default_profile_dir()
    target = plugin_dir(profile)
    removed = None
    try:
        if target.exists():
            if not _is_geolift_plugin(target):
                raise OutputError(f"{target} is not the geolift plugin; left it in place.")
            shutil.rmtree(target)
            removed = target
        if settings_file(profile).exists():
            set_plugin_enabled(profile, False)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputError(f"Cannot uninstall the QGIS plugin from {profile}: {reason}.") from None
    return removed
