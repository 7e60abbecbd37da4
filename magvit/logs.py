"""One logging set-up for every command line entry point."""

import logging


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
