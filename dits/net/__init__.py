"""Client networking: the protocol session over dits.transport."""
