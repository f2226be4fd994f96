"""Logging for the commands: one line per event a user cares about; ``--verbose`` shows the rest.

from core.logs import setup_logging
setup_logging(verbose=False)   # train.py, eval.py and sweep.py call it before any work
"""

from __future__ import annotations

import logging

QUIET = {  # one line per event a user cares about; --verbose shows the rest
    "httpx": logging.WARNING,
    "urllib3": logging.WARNING,
    "accelerate": logging.WARNING,  # "Model weights saved in ...", four lines per checkpoint
    "accelerate.utils.other": logging.ERROR,  # "Removed shared tensor {'lm_head.weight'}": tied embeddings, expected
    "sentence_transformers": logging.WARNING,  # "Loading SentenceTransformer model from ..." (the router baseline)
}


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when a handler was there before (basicConfig then does nothing)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else level)
