"""The daemon's local HTTP surface: ``/health``, ``/api/state``, ``/api/plan``, ``/metrics`` and a
read-only status page. Off the control path: the server runs in a task of its own, reads
snapshots the loop already made, and never writes to a device (README "HTTP API")."""
