"""Benchmarks of the SAM2 Refiner worker against the existing worker's algorithm (`make bench`)."""
