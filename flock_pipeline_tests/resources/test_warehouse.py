import pandas as pd

from flock_pipeline.resources.warehouse import WarehouseResource


def test_replace_rows_is_scoped_and_transactional(tmp_path):
    wh = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    frame = pd.DataFrame([{"epoch": 1, "hotkey": "a", "uid": 1, "status": "scored", "reason": None,
                           "eval_loss": 1.0, "win_rate": 1.0, "weight": 1.0}])
    wh.replace_rows("win_rates", frame, "epoch = ?", [1])
    wh.replace_rows("win_rates", frame.assign(epoch=2, weight=0.5), "epoch = ?", [2])
    wh.replace_rows("win_rates", frame.assign(weight=0.25), "epoch = ?", [1])
    assert wh.win_rates(1)["weight"].tolist() == [0.25]
    assert wh.previous_weights(2) == {1: 0.25}
    assert wh.previous_weights(1) == {}
    bad = frame.assign(no_such_column=1)
    try:
        wh.replace_rows("win_rates", bad, "epoch = ?", [1])
    except Exception:
        pass
    assert wh.win_rates(1)["weight"].tolist() == [0.25]  # the failed replace rolled back its delete


def test_waits_for_another_writer(tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "w.duckdb"
    wh = WarehouseResource(path=str(path))
    wh.query("SELECT 1")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(2)"),
        str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    assert wh.epoch_info(1) is None  # blocks until the other process lets go, then answers
    assert time.monotonic() - started > 0.5
    holder.wait(timeout=10)
