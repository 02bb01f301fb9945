"""The base model's identity (its content digest) is computed once per process for an unchanged directory."""

from __future__ import annotations

import os
import shutil

import pytest

from flock_pipeline.core import tiny_model
from flock_pipeline.resources import EvaluatorResource


def test_the_model_digest_is_read_once_per_process_until_a_file_changes(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights" * 1000)
    (model / "config.json").write_text("{}")
    reads = []
    real = tiny_model._dir_digest
    monkeypatch.setattr(tiny_model, "_dir_digest", lambda path: reads.append(path) or real(path))
    evaluator = EvaluatorResource(base_model=str(model), device="cpu")
    first = evaluator.provenance()
    for _ in range(5):  # what every miner and every sensor tick asks
        assert evaluator.provenance()["base_revision"] == first["base_revision"]
    assert len(reads) == 1
    stat = os.stat(model / "model.safetensors")
    (model / "model.safetensors").write_bytes(b"WEIGHTS" * 1000)  # same size, new content and mtime
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = evaluator.provenance()["base_revision"]
    assert len(reads) == 2 and changed != first["base_revision"]


def test_the_embedded_model_is_built_once_when_many_ask_at_once(tmp_path, monkeypatch):
    """Four threads ask for the embedded model before it exists: one builds it under the lock, the others wait and
    use that build."""
    import threading

    builds = []

    def fake_build(dest):
        builds.append(dest)
        dest.mkdir(parents=True)
        (dest / "flock_build.json").write_text("{}")
        return dest

    monkeypatch.setattr(tiny_model, "build_tiny_model", fake_build)
    monkeypatch.setattr(tiny_model, "shipped_model", lambda: None)  # a package without the built files
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(tiny_model.ensure_tiny_model(tmp_path)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(paths)) == 1


def test_the_shipped_model_is_copied_not_built(tmp_path, monkeypatch):
    """The package ships the built model with its digest: a fresh cache gets a copy with that very revision (the
    same files, hence the same losses, on every machine), once, readable by everyone; damaged shipped files are
    not used."""
    monkeypatch.setattr(tiny_model, "build_tiny_model", lambda dest: pytest.fail("built instead of copied"))
    shipped = tiny_model.shipped_model()
    assert shipped is not None
    recorded = tiny_model.recorded_revision(shipped)
    dest = tiny_model.ensure_tiny_model(tmp_path)
    assert tiny_model.model_revision(dest) == recorded == tiny_model.recorded_revision(dest)
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in dest.iterdir())
    assert tiny_model.ensure_tiny_model(tmp_path) == dest
    damaged = tmp_path / "damaged"
    shutil.copytree(shipped, damaged)
    (damaged / "config.json").write_text("{}")
    monkeypatch.setattr(tiny_model, "SHIPPED", damaged)
    assert tiny_model.shipped_model() is None
