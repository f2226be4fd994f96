"""Logging for the commands: one line per event a user cares about; ``--verbose`` shows the rest.

from core.logs import setup_logging
setup_logging(verbose=False)   # train.py, eval.py and sweep.py call it before any work
"""

from __future__ import annotations

import logging
import warnings

QUIET = {  # one line per event a user cares about; --verbose shows the rest
    "httpx": logging.WARNING,
    "urllib3": logging.WARNING,
    "accelerate": logging.WARNING,  # "Model weights saved in ...", four lines per checkpoint
    "accelerate.utils.other": logging.ERROR,  # "Removed shared tensor {'lm_head.weight'}": tied embeddings, expected
    "sentence_transformers": logging.WARNING,  # "Loading SentenceTransformer model from ..." (the router baseline)
}


class DropMessages(logging.Filter):
    """Drops the records whose message contains one of ``texts``: library lines we cannot stop at their source."""

    def __init__(self, *texts: str):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(t in record.getMessage() for t in self.texts)


# DeepSpeed (imported by accelerate/transformers when installed) logs to stdout, through its own "DeepSpeed" logger and
# handler, that it found no GPU: on a CPU run that is the plan, not news.  A filter on that logger survives DeepSpeed's
# own set-up, which sets its level and adds a handler but keeps the logger object.
DEEPSPEED_CPU = DropMessages("Setting accelerator to CPU")


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when a handler was there before (basicConfig then does nothing)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else level)
    deepspeed = logging.getLogger("DeepSpeed")
    if verbose:
        deepspeed.removeFilter(DEEPSPEED_CPU)
        warnings.filterwarnings("default", message=CHECKPOINTING_RENAMED, category=FutureWarning)
    else:
        deepspeed.addFilter(DEEPSPEED_CPU)  # adding the same filter twice keeps one
        # transformers 5 renamed gradient checkpointing "activation checkpointing" and warns on the old names, which
        # TRL (unwrap_model_for_generation, around every rollout and held-out evaluation) and PEFT still read; our
        # own code uses the new names (policies/device.py, rl/gapg.py), so there is nothing to fix on our side
        warnings.filterwarnings("ignore", message=CHECKPOINTING_RENAMED, category=FutureWarning)


CHECKPOINTING_RENAMED = r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is"
