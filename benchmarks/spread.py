"""Run-to-run spread of asv benchmarks on this machine: which are steady enough to gate on.

    python benchmarks/spread.py --runs 3 --bench 'REGEX'

runs ``asv run --python=same --bench REGEX`` ``--runs`` times on the checked-out commit
(its results are not kept), then prints, for every benchmark and parameter combination,
the largest result over the smallest (1.00: the same every run).  The regression gate
(``benchmarks/compare.sh``) gates on benchmarks whose spread stays well below its factor;
docs/benchmarks.md records the measurements behind that choice.
"""

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _results(folder):
    """{(benchmark, parameters): value} of one asv results folder's (only) results file."""
    (path,) = [p for p in (Path(folder) / "results").glob("*/*.json") if p.name != "machine.json"]
    data = json.loads(path.read_text())
    columns = data["result_columns"]
    values = {}
    for name, row in data["results"].items():
        row = dict(zip(columns, row))
        combinations = list(itertools.product(*row["params"])) if row["params"] else [()]
        for parameters, value in zip(combinations, row["result"] or []):
            if value is not None and value == value:  # failed or skipped: None or NaN
                values[(name, parameters)] = value
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bench", required=True, help="asv's --bench regular expression")
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    runs = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "asv", "run", "--python=same", "--show-stderr", "--bench", args.bench,
                       "--set-commit-hash", commit, "--config", _config_with_results(folder)]  # fmt: skip
            subprocess.run(command, check=True)
            runs.append(_results(folder))
            print(f"run {k + 1} of {args.runs}: {len(runs[-1])} results", file=sys.stderr)
    keys = sorted(set.intersection(*(set(run) for run in runs)), key=str)
    rows = sorted(
        ((max(r[key] for r in runs) / min(r[key] for r in runs), key) for key in keys), reverse=True
    )
    print(f"{'spread':>7}  benchmark (parameters): largest over smallest of {args.runs} runs")
    for spread, (name, parameters) in rows:
        print(f"{spread:7.2f}  {name} {parameters if parameters else ''}")
    return 0


def _config_with_results(folder):
    """A copy of asv.conf.json whose results go to ``folder`` (asv has no flag for it)."""
    text = Path("asv.conf.json").read_text()
    lines = [line for line in text.splitlines() if not line.strip().startswith("//")]
    config = json.loads("\n".join(lines))
    config["results_dir"] = str(Path(folder) / "results")
    config["repo"] = str(Path.cwd())
    config["benchmark_dir"] = str(Path.cwd() / config["benchmark_dir"])
    path = Path(folder) / "asv.conf.json"
    path.write_text(json.dumps(config))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
