"""The google_ml_integration extension's files, and installing them into a server (native mode).

The SQL lives in `sqlfuncs/` (shipped as package data). Native mode copies the control
file and the versioned scripts into the server's extension directory
(`pg_config --sharedir`/extension), after which `CREATE EXTENSION google_ml_integration`
runs in PostgreSQL itself.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

EXTENSION = "google_ml_integration"


def extension_files() -> list[Path]:
    """The control file and every install/upgrade script of the extension."""
    root = Path(str(resources.files("sqlfuncs")))
    files = sorted(root.glob(f"{EXTENSION}.control")) + sorted(root.glob(f"{EXTENSION}--*.sql"))
    return files


def extension_dir(pg_config: Path) -> Path:
    """The server's extension directory, as its pg_config reports it."""
    result = subprocess.run(
        [str(pg_config), "--sharedir"], capture_output=True, text=True, check=True
    )
    return Path(result.stdout.strip()) / "extension"


def install_files(pg_config: Path) -> list[Path]:
    """Copy the extension's files next to the server's other extensions; return the copies.

    Raises PermissionError when the directory is not writable (install as its owner).
    """
    files = extension_files()
    if not any(f.suffix == ".control" for f in files):
        raise FileNotFoundError("sqlfuncs/ has no google_ml_integration.control")
    target = extension_dir(pg_config)
    installed = []
    for source in files:
        destination = target / source.name
        if not destination.exists() or destination.read_bytes() != source.read_bytes():
            shutil.copyfile(source, destination)
            destination.chmod(0o644)
        installed.append(destination)
    log.info("google_ml_integration extension files installed in %s", target)
    return installed
