"""Plot a run's learning curve from its metrics.jsonl: reward, offload rate (overall and per level), γ.

python -m scripts.plot_metrics outputs/cpu_route_1h --out docs/cpu_route_1h.png

train.py already writes ``<output_dir>/learning_curve.png`` at the end of each run; this redraws any run
(rl/curves.py).
"""

from __future__ import annotations

import argparse

from rl.curves import plot_learning_curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None, help="PNG path (default: <run_dir>/learning_curve.png)")
    args = ap.parse_args(argv)
    out = plot_learning_curve(args.run_dir, args.out)
    print(f"wrote {out}" if out else f"no metrics in {args.run_dir} yet")


if __name__ == "__main__":
    main()
