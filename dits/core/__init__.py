"""Pure core: ids, objects, the canonical codec, chunking and ref rules. No I/O, no clock, no env."""
