"""The ``powerctl`` command line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from powerctl.agent.cli import agent as agent_command
from powerctl.agent.cli import certs_app
from powerctl.config import ConfigError, SiteConfig, load_config
from powerctl.mqtt.operator_cli import command_app
from powerctl.stop import stop_on_signals

app = typer.Typer(no_args_is_help=True, help="Microgrid power controller for AI compute sites.")  # --install-completion
sim_app = typer.Typer(no_args_is_help=True, help="Simulated plant: serve, replay, sweep.")
app.add_typer(sim_app, name="sim")
app.add_typer(certs_app, name="certs")  # site CA + agent/controller certificates (powerctl.agent.cli)
app.command("agent")(agent_command)  # the GPU server agent (powerctl.agent.server)
app.add_typer(command_app, name="command")  # operator keys and signed commands (powerctl.mqtt.operator_cli)
err = Console(stderr=True, soft_wrap=True)


def _load(path: Path) -> SiteConfig:
    """Load a config or exit 2 with the message (never a traceback)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/]\n{exc}", highlight=False)
        raise typer.Exit(2) from None


# The [sim] extra (pyproject.toml): the simulator's plots, Parquet output and sweeps.
SIM_EXTRA_MODULES = ("matplotlib", "pyarrow", "dask")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


def _require_sim_extra(command: str) -> None:
    """Exit 2 with one line when the [sim] extra is not installed (never an ImportError deep inside)."""
    missing = [m for m in SIM_EXTRA_MODULES if not _installed(m)]
    if missing:
        err.print(
            f"powerctl {command} needs the simulator: install powerctl[sim] "
            f"(pip install 'powerctl[sim]'; missing: {', '.join(missing)})",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"powerctl {version('powerctl')}")
        except PackageNotFoundError:
            print("powerctl (not installed: version unknown)")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    _version_flag: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Microgrid power controller for AI compute sites."""


def _logging(verbose: bool, json_lines: bool = False) -> None:
    """journald priorities under systemd, JSON lines on request, repeats rate-limited (powerctl.logs)."""
    from powerctl.logs import setup_logging

    setup_logging(verbose=verbose, json_lines=json_lines)


def _profile_problems(config: Path, cfg: SiteConfig) -> list[str]:
    """One line per device whose profile is missing, broken or of another nature."""
    from powerctl.profiles import ProfileError
    from powerctl.profiles.library import site_profile

    problems = []
    for i, d in enumerate(cfg.devices):
        try:
            prof = site_profile(d.profile, cfg.control.profiles_dir)
        except ProfileError as exc:
            problems.append(f"{config}: devices[{i}].profile: {exc}")
            continue
        try:
            prof = prof.for_site(d.registers, f"devices[{i}]")  # as the daemon will (device_profile)
        except ProfileError as exc:
            problems.append(f"{config}: {exc}")
            continue
        if prof.nature != d.nature:
            problems.append(
                f"{config}: devices[{i}].profile: {d.profile} is a {prof.nature.value} profile, "
                f"but the device is a {d.nature.value}"
            )
    return problems


def _load_site(path: Path) -> SiteConfig:
    """``_load`` plus every profile it names: exit 2 with one line per problem (never a traceback)."""
    cfg = _load(path)
    problems = _profile_problems(path, cfg)
    if problems:
        err.print("\n".join(f"[bold red]config error[/]: {p}" for p in problems), highlight=False)
        raise typer.Exit(2)
    return cfg


@app.command()
def check(
    config: Path,
    probe: bool = typer.Option(False, "--probe", help="also connect read-only to every device and print what it reads"),
) -> None:
    """Validate a site config and the profiles it names (``--probe``: and read every device once)."""
    cfg = _load(config)
    problems = _profile_problems(config, cfg)
    if problems:
        err.print("[bold red]config error[/]\n" + "\n".join(problems), highlight=False)
        raise typer.Exit(2)
    print(f"{config}: OK ({len(cfg.devices)} devices, {cfg.gpu.count} GPUs in {len(cfg.gpu.classes)} classes)")
    if probe:
        from powerctl.probe import format_probe, probe_site

        results = asyncio.run(probe_site(cfg))
        print(format_probe(results))
        if not all(r.ok for r in results):
            raise typer.Exit(1)


profiles_app = typer.Typer(no_args_is_help=True, help="Device profiles: the shipped library and a site's own.")
app.add_typer(profiles_app, name="profiles")


@profiles_app.command("list")
def profiles_list(
    config: Path | None = typer.Option(None, "--config", help="a site config: its control.profiles_dir is searched first"),
    profiles_dir: Path | None = typer.Option(None, "--dir", help="a folder of site profiles (overrides --config's)"),
) -> None:
    """Every profile a site can name: key, nature, vendor and model, and where it comes from."""
    from powerctl.profiles import ProfileError
    from powerctl.profiles.library import available, site_profile

    folder: str | Path | None = profiles_dir
    if folder is None and config is not None:
        folder = _load(config).control.profiles_dir
    bad = 0
    for a in available(folder):
        where = "shipped" if a.shipped else f"site ({a.path})"
        if a.shadowed:
            print(f"{a.key:<28} (shipped, replaced by the site's)")
            continue
        try:
            p = site_profile(a.key, folder) if not a.shipped else site_profile(a.key, None)
        except ProfileError as exc:
            bad += 1
            print(f"{a.key:<28} BROKEN {where}: {exc}")
            continue
        print(f"{a.key:<28} {p.nature.value:<8} {p.vendor}: {p.model}  [{where}]")
    if bad:
        raise typer.Exit(2)


STOP_GRACE_S = 15.0


async def _until_signal(coro_factory) -> None:  # type: ignore[no-untyped-def]
    """Run ``coro_factory(stop)`` until SIGTERM/SIGINT sets ``stop``.

    Once stopping, the run gets ``STOP_GRACE_S`` to finish. A task that lost its cancellation
    (a third-party await that swallowed it) must not keep the process alive: the daemon applies
    its safe caps before cancelling anything, so exiting hard after the grace period is safe.
    """
    stop = stop_on_signals()
    main = asyncio.ensure_future(coro_factory(stop))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not main.done():
        done, _pending = await asyncio.wait({main}, timeout=STOP_GRACE_S)
        if not done:
            stuck = [t.get_name() for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()]
            err.print(f"stop: tasks still running after {STOP_GRACE_S:g} s ({', '.join(stuck)}); exiting (GPUs already at the safe cap)")
            os._exit(1)
    stopper.cancel()
    main.result()


@app.command()
def run(
    config: Path,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    log_json: bool = typer.Option(False, "--log-json", help="log one JSON object a line"),
    observe: bool = typer.Option(False, "--observe", help="observe-only: read, plan, log what would be written; write nothing"),
) -> None:
    """Run the controller daemon for a site (SIGTERM/Ctrl-C: GPUs to the safe cap, then exit)."""
    cfg = _load_site(config)
    if observe:
        cfg = cfg.model_copy(update={"control": cfg.control.model_copy(update={"observe_only": True})})
    _logging(verbose, log_json)
    from powerctl.daemon import Daemon
    from powerctl.web.server import PortInUse

    async def main(stop: asyncio.Event) -> None:
        # built inside the loop: the Modbus clients bind to the running event loop when created
        await Daemon(cfg).run(stop)

    try:
        asyncio.run(_until_signal(main))
    except PortInUse as exc:  # [http] or [scada] address taken: one line, GPUs still at the safe cap
        err.print(f"{config}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None


@app.command()
def demo(
    config: Path = typer.Argument(Path("examples/demo-site.toml")),
    seconds: float = typer.Option(180.0, help="how long to run"),
    time_scale: float = typer.Option(20.0, help="simulated PV day speed-up"),
    plain: bool = typer.Option(False, help="print status lines instead of the live table"),
) -> None:
    """Run the demo: simulated plant over Modbus on 127.0.0.1 + the daemon + a live table."""
    cfg = _load_site(config)
    _require_sim_extra("demo")
    from powerctl.sim.demo import run_demo

    code = asyncio.run(run_demo(cfg, seconds=seconds, time_scale=time_scale, plain=plain or not sys.stdout.isatty()))
    raise typer.Exit(code)


@app.command()
def status(
    config: Path,
    as_json: bool = typer.Option(False, "--json", help="print /api/state as JSON"),
    timeout_s: float = typer.Option(3.0, "--timeout", help="seconds to wait for the daemon"),
) -> None:
    """Ask the running daemon (its [http] API): one line per quantity; exit 1 if unhealthy, 2 if unreachable."""
    from powerctl.web.client import DaemonUnreachable, fetch_state, format_state

    cfg = _load(config)
    if cfg.http is None:
        err.print(f"{config}: no [http] section: the daemon has no API to ask", highlight=False, markup=False)
        raise typer.Exit(2)
    try:
        state = fetch_state(cfg.http.listen, cfg.http.port, timeout_s)
    except DaemonUnreachable as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    print(json.dumps(state, indent=2) if as_json else format_state(state))
    raise typer.Exit(0 if state.get("health", {}).get("ok") else 1)


# --- GPU fail-safe commands (issue 5; logic in powerctl.watchdog and powerctl.gpu.failsafe) ---


@app.command()
def watchdog(
    config: Path,
    stale_after_s: float = typer.Option(None, help="heartbeat silence before safe caps (default: max(3, 5 x dispatch period))"),
    poll_s: float = typer.Option(0.5, help="how often to look at the heartbeat file"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Separate process: apply the safe GPU cap when the daemon's heartbeat stops."""
    _load(config)
    _logging(verbose)
    from powerctl.watchdog import main_watchdog

    raise typer.Exit(main_watchdog(config, stale_after_s=stale_after_s, poll_s=poll_s))


@app.command("apply-safe-caps")
def apply_safe_caps_cmd(config: Path) -> None:
    """Boot time: put every GPU at the safe cap (never raises a cap) before jobs start."""
    cfg = _load(config)
    from powerctl.gpu.failsafe import apply_safe_caps

    raise typer.Exit(apply_safe_caps(cfg))


@app.command("scan")
def scan_cmd(
    target: str = typer.Argument(..., help="HOST[:PORT] of a SunSpec Modbus TCP device"),
    unit: int = typer.Option(1, "--unit", help="Modbus unit id"),
    timeout_s: float = typer.Option(2.0, "--timeout", help="seconds per request"),
) -> None:
    """Discover a SunSpec device: print its models and key points with units."""
    from powerctl.sunspec.scan import ScanError, format_scan, parse_target, scan

    try:
        host, port = parse_target(target)
        print(format_scan(scan(host, port, unit, timeout_s)))
    except (ScanError, ValueError) as exc:
        err.print(f"[bold red]scan failed[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


# --- least privilege (issue 8; logic in powerctl.capsetter) ---


@app.command()
def capsetter(config: Path, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Privileged cap-setter: sets GPU caps for the unprivileged daemon, within ITS config's limits."""
    _logging(verbose)
    from powerctl.capsetter import main_capsetter

    raise typer.Exit(main_capsetter(config))


def main() -> None:
    # The simulator's commands are mounted only when asked for: `powerctl run` never loads
    # powerctl.sim, and the edge install (no [sim] extra) still has a working daemon.
    if sys.argv[1:2] == ["sim"]:
        if sys.argv[2:3] not in ([], ["--help"], ["-h"]):
            try:
                _require_sim_extra("sim")
            except typer.Exit as exc:  # outside the typer app here
                raise SystemExit(exc.exit_code) from None
        from powerctl.sim.cli_sim import register as _register_sim

        _register_sim(sim_app)
    app()


if __name__ == "__main__":
    main()
