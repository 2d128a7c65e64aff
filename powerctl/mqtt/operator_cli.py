"""``powerctl command ...``: what an operator runs to command a site (keygen, sign, send).

- ``keygen NAME --out DIR``: a new Ed25519 key pair; the private key goes to ``DIR/NAME.key``
  (PEM, mode 0600, never onto the controller), and the ``[[mqtt.operators]]`` entry to paste into
  the site's config is printed;
- ``sign CONFIG COMMAND VALUE --operator NAME --key FILE``: prints the signed payload for the
  command's topic (for ``mosquitto_pub -m``);
- ``send CONFIG COMMAND VALUE ...``: signs and publishes it (retain off), then prints the daemon's
  result from ``commands/<name>/result``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from powerctl.config import ConfigError, SiteConfig, load_config
from powerctl.mqtt.auth import public_key_b64, sign_command
from powerctl.mqtt.commands import COMMANDS
from powerctl.mqtt.topics import TopicTree

command_app = typer.Typer(no_args_is_help=True, help="Operator commands: keys, signed payloads, sending.")


def _fail(msg: str) -> typer.Exit:
    typer.echo(msg, err=True)
    return typer.Exit(2)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The operator's key; refused when others can read it (like every secret file here)."""
    try:
        mode = os.stat(path).st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the operator key: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: operator private key readable by others (mode {stat.filemode(mode)}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


def parse_value(text: str) -> Any:
    """``120`` -> 120.0, ``hold`` -> "hold", ``clear`` -> None (ends the lease)."""
    if text.lower() in ("clear", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _topic(cfg: SiteConfig, command: str) -> str:
    if cfg.mqtt is None:
        raise ConfigError("the config has no [mqtt] section")
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r} (one of {', '.join(COMMANDS)})")
    return TopicTree(cfg.mqtt.topic_prefix, cfg.site.id, cfg.site.module).command_set(command)


@command_app.command("keygen")
def keygen(name: str, out: Path = typer.Option(Path("."), help="folder for NAME.key (mode 0600)")) -> None:
    key = Ed25519PrivateKey.generate()
    path = out / f"{name}.key"
    if path.exists():
        raise _fail(f"{path} exists: not overwritten")
    out.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    typer.echo(f"# private key: {path} (keep it with the operator, never on the controller)\n"
               f'[[mqtt.operators]]\nname = "{name}"\npublic_key = "{public_key_b64(key)}"')


@command_app.command("sign")
def sign(config: Path, command: str, value: str,
         operator: str = typer.Option(..., help="operator name as in [[mqtt.operators]]"),
         key: Path = typer.Option(..., help="the operator's private key (PEM, mode 0600)"),
         lease_s: float = typer.Option(None, help="shorter lease than mqtt.command_lease_s")) -> None:
    try:
        cfg = load_config(config, check_secrets=False)
        topic = _topic(cfg, command)
        payload = sign_command(load_private_key(key), topic=topic, value=parse_value(value),
                               operator=operator, lease_s=lease_s)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"# topic: {topic}")
    typer.echo(payload.decode())


async def _send(cfg: SiteConfig, topic: str, payload: bytes, username: str | None, password: str | None,
                timeout_s: float) -> dict[str, Any] | None:
    import aiomqtt

    assert cfg.mqtt is not None
    result_topic = topic.rsplit("/", 1)[0] + "/result"
    async with aiomqtt.Client(cfg.mqtt.host, cfg.mqtt.port, username=username, password=password,
                              timeout=timeout_s) as client:
        await client.subscribe(result_topic, qos=1, timeout=timeout_s)
        await client.publish(topic, payload, qos=1, retain=False, timeout=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                async for msg in client.messages:
                    body = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                    doc = json.loads(body)
                    if isinstance(doc, dict):
                        return doc
        except TimeoutError:
            return None
    return None


@command_app.command("send")
def send(config: Path, command: str, value: str,
         operator: str = typer.Option(..., help="operator name as in [[mqtt.operators]]"),
         key: Path = typer.Option(..., help="the operator's private key (PEM, mode 0600)"),
         lease_s: float = typer.Option(None, help="shorter lease than mqtt.command_lease_s"),
         username: str = typer.Option(None, help="broker user (the operator's, see examples/mosquitto)"),
         password_file: Path = typer.Option(None, help="file holding the broker password"),
         timeout_s: float = typer.Option(5.0, "--timeout", help="seconds to wait for the daemon's result")) -> None:
    try:
        cfg = load_config(config, check_secrets=False)
        topic = _topic(cfg, command)
        payload = sign_command(load_private_key(key), topic=topic, value=parse_value(value),
                               operator=operator, lease_s=lease_s)
        password = password_file.read_text().strip() if password_file else None
    except (ConfigError, OSError) as exc:
        raise _fail(str(exc)) from None
    try:
        res = asyncio.run(_send(cfg, topic, payload, username, password, timeout_s))
    except Exception as exc:  # broker away, login refused: one line, not a traceback
        raise _fail(f"cannot send to {cfg.mqtt.host}:{cfg.mqtt.port}: {exc}") from None  # type: ignore[union-attr]
    if res is None:
        raise _fail(f"sent on {topic}; no result from the daemon within {timeout_s:g} s")
    typer.echo(json.dumps(res))
    raise typer.Exit(0 if res.get("accepted") else 1)
