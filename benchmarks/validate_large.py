"""Time `flock miner validate` on a large file: 100,000 rows, about 50 MB (a benchmark, not a test).

    python benchmarks/validate_large.py            # writes .flock/bench/large.jsonl, prints the timing as JSON
"""

import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = 100_000


def write_file(path: Path) -> int:
    filler = "Knowledge-dense answer text that pads each row to roughly five hundred bytes. " * 4
    with open(path, "w") as f:
        for i in range(ROWS):
            row = {"system": "You are a helpful assistant.",
                   "conversations": [{"role": "user", "content": f"Question number {i}: what is fact {i}?"},
                                     {"role": "assistant", "content": f"Fact {i} is this. {filler}"}]}
            f.write(json.dumps(row) + "\n")
    return path.stat().st_size


def main() -> int:
    path = Path(".flock/bench/large.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    size = write_file(path)
    flock = Path(sys.executable).parent / "flock"
    t0 = time.perf_counter()
    out = subprocess.run([str(flock), "miner", "validate", str(path), "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    doc = json.loads(out.stdout)
    print(json.dumps({"rows": ROWS, "bytes": size, "seconds": round(seconds, 2), "exit_code": out.returncode,
                      "valid": doc["valid"], "rows_valid": doc["rows_valid"], "rows_used": doc["rows_used"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
