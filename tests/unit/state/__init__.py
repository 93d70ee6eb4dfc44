"""Unit tests of the state volume: ledger, lock, directories (worker/state/)."""
