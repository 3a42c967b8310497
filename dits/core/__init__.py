"""Pure core: ids, objects, the canonical codec and chunking. No I/O, no clock, no env."""
