"""Put the process-wide logging set-up back after a test that called ``logsetup.configure``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from worker.telemetry import logsetup, metrics


@contextmanager
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    emf = logging.getLogger(metrics.LOGGER_NAME)
    saved = (list(root.handlers), root.level, list(emf.handlers), emf.level)
    try:
        yield
    finally:
        logsetup.shutdown(0)
        for logger, handlers in ((root, saved[0]), (emf, saved[2])):
            for handler in list(logger.handlers):
                if handler not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
        root.setLevel(saved[1])
        emf.setLevel(saved[3])
        structlog.reset_defaults()
