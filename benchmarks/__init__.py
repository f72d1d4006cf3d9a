"""lineside's benchmarks: latency, parity and accuracy reports (python -m benchmarks...)."""
