"""The speculative agent: chunk what editors write while they write it, pre-upload the chunks.

Submodules are imported where they are used; this package imports nothing heavy on its own.
"""
