"""Unit tests of the example processing program (worker/examples/)."""
