"""``powerctl agent`` and ``powerctl certs``: mounted by ``powerctl.cli``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

certs_app = typer.Typer(no_args_is_help=True, help="Site CA and certificates for the agents' mutual TLS.")


def agent(config: Path, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """GPU server agent: safe cap at start, caps from the controller over mTLS, held on a lease."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from powerctl.agent.server import main_agent

    raise typer.Exit(main_agent(config))


@certs_app.command("init")
def certs_init(
    out: Path = typer.Option(..., "--out", help="folder for ca.pem/.key, controller.pem/.key, agent-NNN.pem/.key"),
    agents: int = typer.Option(..., "--agents", min=0, max=10000, help="how many agent certificates"),
    site: str = typer.Option("site", "--site", help="site name written into the certificates"),
    ip: list[str] = typer.Option(["127.0.0.1"], "--ip", help="IP SANs for the agent certificates (repeatable)"),
    days: int = typer.Option(825, "--days", min=1, max=3650),
) -> None:
    """Make a site CA, a controller certificate and N agent certificates (keys mode 0600)."""
    from powerctl.agent.certs import init_site

    try:
        done = init_site(out, agents=agents, site=site, ips=tuple(ip), days=days)
    except (FileExistsError, ValueError, OSError) as exc:
        typer.echo(f"certs init: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{out}: site CA, controller and {agents} agent certificate(s) ({len(done)} pairs); "
               "keep ca.key offline")
