"""Tiny random-weight models of the real architectures in the released file layout, for the tests, the
benchmarks and `python -m got_backend generate --smoke`."""
