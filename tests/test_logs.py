"""core/logs.py: the commands' default logging hides library chatter; --verbose shows it."""

import logging

from core.logs import setup_logging


def test_default_logging_hides_checkpoint_chatter_and_verbose_shows_it():
    shared = logging.getLogger("accelerate.utils.other")  # "Removed shared tensor" at every checkpoint
    saved = logging.getLogger("accelerate.checkpointing")  # "Model weights saved in ..."
    root = logging.getLogger().level
    try:
        setup_logging(verbose=False)
        assert not shared.isEnabledFor(logging.WARNING) and not saved.isEnabledFor(logging.INFO)
        assert logging.getLogger("train").isEnabledFor(logging.INFO)  # our own events still show
        assert not logging.getLogger("policies.cloud").isEnabledFor(logging.DEBUG)  # cloud retries are debug
        setup_logging(verbose=True)
        assert shared.isEnabledFor(logging.WARNING) and saved.isEnabledFor(logging.INFO)
    finally:
        logging.getLogger().setLevel(root)
        for name in ("accelerate", "accelerate.utils.other", "httpx", "urllib3"):
            logging.getLogger(name).setLevel(logging.NOTSET)
