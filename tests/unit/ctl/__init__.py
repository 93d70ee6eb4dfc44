"""Unit tests of processorctl (worker/ctl/)."""
