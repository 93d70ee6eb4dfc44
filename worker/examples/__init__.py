"""Example processing programs shipped with processor.

``summarize`` is a standalone, stdlib-only program that follows the processing
command contract (ARCHITECTURE.md §3): ``python -m worker.examples.summarize
INPUT OUTPUT_DIR``; ``stats`` and ``formats`` are its building blocks. It is
what ``processor local`` runs by default.
"""
