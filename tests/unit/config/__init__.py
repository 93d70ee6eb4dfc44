"""Unit tests of the configuration (worker/config/)."""
