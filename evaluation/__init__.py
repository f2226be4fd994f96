"""Evaluation, one layer above the environments: how a policy is judged at a budget, and how the results are shown.

    python eval.py --run outputs/cpu_default          # evaluation/suites.py: every model over the suites
    python -m scripts.plot_metrics outputs/cpu_default  # evaluation/curves.py: the learning curve

protocol.py (the cap, the rows, the trainer's held-out evaluation), passes.py (the resumable device and cloud passes),
metrics.py (APGR/CPT, bootstrap intervals), tables.py, router.py (the base device's training rollouts: the router
baseline and the self-confidence threshold), suites.py (eval.py's run), summary.py (a finished run's summary),
results.py (the grid's report), curves.py (plots).
"""
