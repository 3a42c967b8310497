"""Storage behind small interfaces: blobs (chunks, objects), refs and the index.

Nothing above this package imports lmdb. `base` holds the contracts, `memory` the in-memory
twins, `lmdb` the on-disk implementation used by repositories.
"""
