"""Validator homes for tests: a FLOCK_HOME whose model cache already holds the session's embedded tiny model (built
once per session by the `tiny_model_dir` fixture), so no test builds the model again."""

from __future__ import annotations

import shutil
from pathlib import Path


def home_with_model(home: Path, tiny_model_dir: Path) -> Path:
    """`home` (created when missing) with a copy of the tiny model in `home/models`; returns `home`."""
    home = Path(home)
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    return home
