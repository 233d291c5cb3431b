"""Time ``lm-eval-routed diff --flips`` on two large synthetic lm-eval runs and print the figure.

The diff's speed is measured here, not asserted in the tests (a shared machine's timings are noise
there): two runs of N documents of 40 tokens each, 10% of the scores flipped, as the diff test builds.

    python scripts/bench_diff.py                 # 5000 documents, 3 repeats
    python scripts/bench_diff.py --docs 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the runs' writer
from run_fixtures import Sample, write_lm_eval  # noqa: E402

from lm_eval_routed import cli  # noqa: E402


def runs(folder: Path, n: int) -> tuple[Path, Path]:
    """Two lm-eval runs of ``n`` documents whose scores differ on about a tenth of them."""
    rng = np.random.default_rng(0)
    right = rng.random(n) < 0.6
    flips = rng.random(n) < 0.1
    base = [Sample(i, float(right[i]), [" t"] * 40, list(range(40))) for i in range(n)]
    other = [
        Sample(i, float(right[i] ^ flips[i]), [" t"] * 40, list(range(0, 40, 3)), latency=0.05)
        for i in range(n)
    ]
    return write_lm_eval(folder / "a", base), write_lm_eval(folder / "b", other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = runs(Path(tmp), args.docs)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(["diff", str(a), str(b), "--flips", "--format", "json"])
            times.append(time.perf_counter() - start)
            if code != 0:
                raise SystemExit(f"diff exited with {code}")
    print(f"diff --flips of 2 x {args.docs} documents (40 tokens each): ", end="")
    print(f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s")


if __name__ == "__main__":
    main()
