"""Porcelain operations: take a Repository, return result objects, never print."""
