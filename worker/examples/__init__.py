"""Example processing programs shipped with processor.

Each module is a standalone, stdlib-only program that follows the processing
command contract (ARCHITECTURE.md §3): ``python -m worker.examples.<name> INPUT
OUTPUT_DIR``. ``summarize`` is what ``processor local`` runs by default.
"""
