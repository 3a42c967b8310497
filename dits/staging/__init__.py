"""Predictive chunk staging: chunks are read, analysed and compressed ahead of the wire.

The pure decisions live in ``config`` (the ``[staging]`` section), ``analysis`` (what kind of
bytes a chunk holds), ``compression`` (which zstd level, if any, pays on this link and machine)
and ``network`` (throughput, RTT, loss and trend from acknowledgements). The threads, queues and
buffers that act on them are thin glue around these modules.
"""
