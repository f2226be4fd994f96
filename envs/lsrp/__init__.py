"""LSRP mode (docs/method.md §6): the cloud leads with a guideline, the device answers with the user's private data.

    accelerate launch train.py --config configs/lsrp_cpu.yaml      # rl.env: lsrp

One module per idea (the environment side here; the training side in rl/):
  strategies.py  the four leader strategies, the general leader prompt and the subordinate prompt
  users.py       the seeded synthetic user-task generator (private profiles + public tasks)
  metrics.py     UDRR (eq. 15), PPL (eq. 16), Flesch reading ease, the LLM judge, score S (eq. 17)
                 and its weights from the knee of an NSGA-II Pareto front (eq. 18)
  rag.py         U-U-RAG: embed user-task pairs, FAISS (Euclidean) index, top-k vote (eq. 6-9)
  pipeline.py    guideline -> device output -> metrics for (pair, strategy) records, resumable
  rl/smfb_dpo.py SMFB-DPO: preference pairs from two temperatures, per-strategy balancing, DPO of the leader
  rl/lsrp.py     the whole run: index, strategy choice (U-U-RAG / device / fixed), SMFB-DPO, before/after
"""
