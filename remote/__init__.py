"""dits-remote: the self-hosted server (arrives with the remote issue)."""
