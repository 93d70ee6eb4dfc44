"""Unit tests of processor local (worker/local/)."""
