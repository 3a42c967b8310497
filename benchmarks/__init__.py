"""Reproducible benchmarks with their own data generators; run as ``python -m benchmarks NAME``.

Not run by CI. Each benchmark module exposes ``main(argv: list[str] | None) -> int``.
"""
