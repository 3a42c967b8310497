"""dits: version control for video projects.

The client package. `dits.core` is pure (no I/O), `dits.store` holds storage behind small
interfaces, `dits.ops` the porcelain operations, `dits.cli` the thin command line.
"""

__version__ = "0.1.0"
