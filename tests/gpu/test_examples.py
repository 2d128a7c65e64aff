"""The shipped GPU examples stay valid: shed hooks parse into the config model."""

from __future__ import annotations

import tomllib
from pathlib import Path

from powerctl.config import parse_config
from tests.gpu.site import site_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_shed_hook_examples_validate() -> None:
    hooks = tomllib.loads((EXAMPLES / "hooks" / "shed-hooks.toml").read_text())["gpu"]
    d = site_dict(classes=[{"name": "prod", "gpus": 8, "priority": 0},
                           {"name": "batch", "gpus": 8, "priority": 1},
                           {"name": "scavenger", "gpus": 8, "priority": 2}],
                  gpu=hooks)
    cfg = parse_config(d, "shed-hooks.toml")
    by_class = {h.workload: h for h in cfg.gpu.shed_hooks}
    assert by_class["scavenger"].shed is not None and by_class["scavenger"].shed[0] == "kubectl"
    assert by_class["batch"].restore is not None and by_class["batch"].restore[1] == "resume"


def test_systemd_units_run_the_fail_safe_commands() -> None:
    safe = (EXAMPLES / "systemd" / "powerctl-safe-caps.service").read_text()
    dog = (EXAMPLES / "systemd" / "powerctl-watchdog.service").read_text()
    assert "powerctl apply-safe-caps" in safe and "After=nvidia-persistenced.service" in safe
    assert "powerctl watchdog" in dog and "Restart=always" in dog
    for unit in (safe, dog):
        assert "AmbientCapabilities=CAP_SYS_ADMIN" in unit
