"""``powerctl agent``: the node agent on every GPU server (caps over mTLS, held on a lease)."""
