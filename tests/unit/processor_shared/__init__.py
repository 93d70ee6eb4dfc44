"""Unit tests of the code shared with the Lambda (processor_shared/)."""
