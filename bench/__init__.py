"""Benchmarks of tasklease and its peers (run as ``python -m bench``)."""
