"""Secrets kept in *_file settings must not sit in world-readable files either."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from powerctl.config import ConfigError, load_config

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.toml"


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('[mqtt]\nhost = "127.0.0.1"\npassword_file = "{f}"\n', "mqtt.password_file"),
        ('[telemetry.influx]\nurl = "http://127.0.0.1:1"\norg = "o"\nbucket = "b"\ntoken_file = "{f}"\n',
         "telemetry.influx.token_file"),
    ],
)
def test_world_readable_secret_file_refused(tmp_path: Path, section: str, field: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    text = DEMO.read_text()
    cfg = tmp_path / "site.toml"
    cfg.write_text(text + "\n" + section.format(f=secret))
    os.chmod(cfg, 0o644)  # the config itself holds no secret: world-readable is fine
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match=rf"{field}: .*secret is world-readable"):
        load_config(cfg)
    os.chmod(secret, 0o640)
    load_config(cfg)
    secret.unlink()  # not there yet: its reader reports it when needed, the config itself is fine
    load_config(cfg)
