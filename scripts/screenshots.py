"""Screenshots of the Dagster UI after three epochs of the embedded demo network, taken with headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--home DIR] [--port 3377]

The scenario (`run_scenario`, also run by the tests): epoch 1 is the demo epoch. Before epoch 2 the honest-fair
miner publishes a new revision, and its training crashes on every attempt (this script makes the trainer raise,
as a worker that dies on that data would): the evaluation is retried, then recorded as a failure, never as a loss.
Before epoch 3 it publishes a fixed revision, which is evaluated and scored. The webserver runs on a fresh
DAGSTER_HOME throughout; the pictures are taken after epoch 2 and after epoch 3:

- `status-after-failure.png` / `status-after-recovery.png`: the `miner_evaluated` check per miner partition after
  epoch 2 (honest-fair's evaluation failed: red) and after epoch 3 (its success supersedes the failure);
- `miner-history-plots.png`: the `miner_history` asset's plots (x = epochs): each miner's eval loss, rank and
  weight over the three epochs, beside the base model's loss;
- `miner-history-table.png`: epoch 3's miners side by side (the same asset's table);
- `epoch-report.png`: the epoch report of epoch 3 (its HTML page).

Needs Debian's `chromium` (`apt-get install -y chromium`) and Playwright (`pip install -e '.[ui]'`), which drives
it (no browser is downloaded); FLOCK_CHROMIUM names another binary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAILING = "hk-honest-fair"  # the miner whose second revision crashes training
CRASH = "the training worker died on this dataset (simulated by scripts/screenshots.py)"


def _recommit(home: Path, resources: dict, drop_last: int) -> str:
    """The failing miner publishes its demo data minus its last `drop_last` rows as a new revision and commits it."""
    from flock_pipeline.core.commitment import Commitment
    from flock_pipeline.demo import demo_miners
    from flock_pipeline.resources.hub import LocalHubResource

    miner = next(m for m in demo_miners() if m.hotkey == FAILING)
    lines = miner.data.splitlines()
    data = b"\n".join(lines[:len(lines) - drop_last]) + b"\n"
    revision = LocalHubResource(root=str(home / "hub"), as_owner=True).upload(miner.repo, data, private=False)
    resources["chain"].set_commitment(miner.hotkey, Commitment(miner.repo, miner.competition_id,
                                                               revision).to_compressed_str())
    return revision


@contextlib.contextmanager
def crashing_training():
    """Every LoRA training in this process raises (a crash, not a validator fault: the evaluator retries it and
    then records the miner's failure)."""
    from flock_pipeline.core import evaluator as core_eval

    real = core_eval.train_and_evaluate_tokens

    def crash(*args, **kwargs):
        raise RuntimeError(CRASH)

    core_eval.train_and_evaluate_tokens = crash
    try:
        yield
    finally:
        core_eval.train_and_evaluate_tokens = real


def run_scenario(home: Path, instance, progress=lambda msg: None, after_epoch=lambda i, epoch: None) -> list[int]:
    """Seed the demo network in `home` and run its three epochs (see the module's docstring) on `instance`;
    `after_epoch(i, epoch)` is called after the i-th (from 0). Returns the epochs."""
    from flock_pipeline.defs.epoch import run_epoch
    from flock_pipeline.demo import seed_demo_network
    from flock_pipeline.resources import build_resources

    first = seed_demo_network(home, force=True)
    resources = build_resources(home)
    chain = resources["chain"]
    epochs = [first, first + 1, first + 2]
    for i, epoch in enumerate(epochs):
        if i:
            _recommit(home, resources, drop_last=i)  # epoch 2: the revision that crashes; epoch 3: the fix
            chain.advance(chain.epoch_start(epoch) - chain.current_block())
        with crashing_training() if i == 1 else contextlib.nullcontext():
            run_epoch(epoch, resources, instance, progress=progress)
        after_epoch(i, epoch)
    return epochs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_webserver(dagster_home: Path, flock_home: Path, port: int) -> subprocess.Popen:
    """dagster-webserver on the repo's workspace, with default signal handlers (a parent shell may have left
    SIGINT/SIGTERM ignored), in its own process group; waits until it answers."""
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "FLOCK_HOME": str(flock_home)}
    webserver = Path(sys.executable).parent / "dagster-webserver"

    def defaults():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    log = open(dagster_home / "webserver.log", "w")
    proc = subprocess.Popen([str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=defaults,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited {proc.returncode}: see {dagster_home / 'webserver.log'}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as resp:
                if resp.status == 200:
                    return proc
        time.sleep(1)
    _stop(proc)
    raise RuntimeError("dagster-webserver did not answer within 180 s")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _chromium() -> str:
    found = os.environ.get("FLOCK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise SystemExit("no chromium: `apt-get install -y chromium`, or set FLOCK_CHROMIUM")
    return found


def _nux_seen(base: str) -> None:
    """Tell the webserver its "Join the Dagster community" dialog was seen (it shows on a first local visit)."""
    body = json.dumps({"query": "mutation SetNuxSeen { setNuxSeen }"}).encode()
    request = urllib.request.Request(base + "/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        resp.read()


def shoot(out: Path, url: str, clicks: tuple[str, ...] = (), height: int = 1000, full_page: bool = False) -> Path:
    """One picture, in a child process (Playwright's sync API runs an event loop that Dagster's in-process runs
    must not share): open `url`, click each text of `clicks` in turn (`last:TEXT`: its last occurrence, e.g. a
    sub-tab named like a tab), save the page as `out`."""
    spec = {"out": str(out), "url": url, "clicks": list(clicks), "height": height, "full_page": full_page}
    subprocess.run([sys.executable, __file__, "--shoot", json.dumps(spec)], check=True, timeout=300)
    if not out.is_file():
        raise RuntimeError(f"no screenshot of {url}")
    return out


def _shoot_now(spec: dict) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": spec["height"]})
            page.goto(spec["url"])
            page.wait_for_load_state("networkidle")
            for text in spec["clicks"]:
                found = page.get_by_text(text.removeprefix("last:"), exact=True).filter(visible=True)
                (found.last if text.startswith("last:") else found.first).click()
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(1500)
            page.wait_for_timeout(1500)
            page.screenshot(path=spec["out"], full_page=spec["full_page"])
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--home", type=Path, help="the demo home (default: a new temporary folder)")
    parser.add_argument("--port", type=int, default=0, help="the webserver's port (default: a free one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    work = Path(tempfile.mkdtemp(prefix="flock-screenshots-"))
    home = (args.home or work / "home").resolve()
    dagster_home = work / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["FLOCK_HOME"] = str(home)
    args.out.mkdir(parents=True, exist_ok=True)
    port = args.port or _free_port()

    import dagster as dg

    instance = dg.DagsterInstance.get()
    proc = _start_webserver(dagster_home, home, port)
    base = f"http://127.0.0.1:{port}"
    taken: list[Path] = []
    checks = base + "/assets/miner_eval_losses?view=checks"
    try:
        _nux_seen(base)

        def after(i: int, epoch: int) -> None:
            if i == 1:  # honest-fair's evaluation has just failed for good
                taken.append(shoot(args.out / "status-after-failure.png", checks,
                                   ("miner_evaluated", "last:Partitions", "last:hk-honest-fair")))

        epochs = run_scenario(home, instance, progress=lambda m: print(m, file=sys.stderr), after_epoch=after)
        taken.append(shoot(args.out / "status-after-recovery.png", checks,
                           ("miner_evaluated", "last:Partitions", "last:hk-honest-fair")))
        taken.append(shoot(args.out / "miner-history-plots.png", base + "/assets/miner_history?view=overview",
                           ("Plots",), height=2300))
        taken.append(shoot(args.out / "miner-history-table.png", base + "/assets/miner_history?view=events",
                           height=1400))
        report = home / "corpus" / "reports" / f"epoch-{epochs[-1]}" / "report.html"
        taken.append(shoot(args.out / "epoch-report.png", report.as_uri(), full_page=True))
    finally:
        _stop(proc)
    print(json.dumps({"screenshots": [str(p) for p in taken], "home": str(home)}, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--shoot"]:
        _shoot_now(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
