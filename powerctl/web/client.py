"""``powerctl status``: ask the running daemon over its HTTP API (stdlib only, bounded by a timeout)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class DaemonUnreachable(Exception):
    pass


def fetch_state(host: str, port: int, timeout_s: float = 3.0) -> dict[str, Any]:
    h = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    url = f"http://{h}:{port}/api/state"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            doc = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DaemonUnreachable(f"no answer from the daemon at {url}: {reason} (is `powerctl run` running?)") from None
    if not isinstance(doc, dict):
        raise DaemonUnreachable(f"{url}: not a state document")
    return doc


def _kw(v: Any) -> str:
    return "n/a" if not isinstance(v, int | float) else f"{v:.1f} kW"


def format_state(s: dict[str, Any]) -> str:
    """One line per quantity, every battery and genset, then health and its reasons."""
    health = s.get("health") or {}
    solve = s.get("last_solve_ms")
    rows = [
        ("site", f"{s.get('site')}/{s.get('module')}"),
        ("mode", str(s.get("mode"))),
        ("health", "ok" if health.get("ok") else "UNHEALTHY: " + "; ".join(health.get("reasons") or [])),
        ("PV", _kw(s.get("pv_kw"))),
    ]
    for name, b in (s.get("batteries") or {}).items():
        soc = b.get("soc_pct")
        rows.append((f"battery {name}", ("n/a" if soc is None else f"{soc:.1f} %") + f", {_kw(b.get('p_kw'))}"))
    for name, g in (s.get("gensets") or {}).items():
        run = g.get("running")
        rows.append((f"genset {name}", ("n/a" if run is None else ("running" if run else "stopped")) + f", {_kw(g.get('p_kw'))}"))
    rows.append(("GPU power", _kw(s.get("gpu_kw"))))
    for name, c in (s.get("classes") or {}).items():
        rows.append((f"GPU budget {name}", f"{_kw(c.get('budget_kw'))}, caps {c.get('cap_w_min', 0):.0f}-{c.get('cap_w_max', 0):.0f} W"))
    rows += [
        ("supply available", _kw(s.get("available_kw"))),
        ("last solve", "n/a" if solve is None else f"{solve:.0f} ms ({s.get('plan_rung')})"),
        ("stale signals", ", ".join(s.get("stale") or []) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
