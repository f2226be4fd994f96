"""Plot a run's learning curve from its metrics.jsonl: reward, offload rate (overall and per level), γ.

python -m scripts.plot_metrics outputs/cpu_route_1h --out docs/data/cpu_route_1h.png
python -m scripts.plot_metrics --compare "dual 0.5=outputs/a,dual 0.1=outputs/b" --out docs/compare.png

train.py already writes ``<output_dir>/learning_curve.png`` at the end of each run; this redraws any run
(evaluation/curves.py).
"""

from __future__ import annotations

import argparse
import os

from evaluation.curves import plot_learning_curve, plot_run_comparison


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--out", default=None, help="PNG path (default: <run_dir>/learning_curve.png)")
    ap.add_argument(
        "--compare", default=None, help="label=run_dir,label=run_dir,...: the runs side by side (needs --out)"
    )
    args = ap.parse_args(argv)
    if args.compare:
        runs = dict(item.split("=", 1) for item in args.compare.split(",") if "=" in item)
        missing = [d for d in runs.values() if not os.path.exists(os.path.join(d, "metrics.jsonl"))]
        if not args.out or len(runs) < 1 or missing:
            ap.error(
                f"--compare needs label=run_dir pairs of finished or running runs and --out (no metrics: {missing})"
            )
        print(f"wrote {plot_run_comparison(runs, args.out)}")
        return
    if not args.run_dir:
        ap.error("give a run directory, or --compare")
    out = plot_learning_curve(args.run_dir, args.out)
    print(f"wrote {out}" if out else f"no metrics in {args.run_dir} yet")


if __name__ == "__main__":
    main()
