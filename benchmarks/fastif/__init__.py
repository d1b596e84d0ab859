"""FastIF's measurements reproduced on this machine: ``python -m benchmarks.fastif [--quick]``."""
