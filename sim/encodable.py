"""Before serving: can every simulated device's registers carry the site's nameplate values?

A profile's register type bounds what a device can report (SunSpec DER ``W`` is an int16 with a
fixed scale factor: 32.767 kW at most); a plant that pushes more would crash the simulator in
the middle of a run. ``powerctl sim serve`` and ``powerctl demo`` ask this first and refuse to
start, naming the device, its profile and the value.
"""

from __future__ import annotations

from powerctl.config import SiteConfig
from powerctl.natures import Nature
from powerctl.profiles.codec import CodecError
from powerctl.sim.devices import DeviceSimulator


def nameplate_kw(d: object, nature: Nature) -> list[float]:
    """The extreme ``p_kw`` values the plant may push for a device (both signs where it has two)."""
    lim = getattr(d, "limits", None)
    if nature is Nature.PV:
        return [float(lim.max_ac_kw or lim.kwp)] if lim is not None else []
    if nature is Nature.BATTERY:
        return [float(lim.max_discharge_kw), -float(lim.max_charge_kw)] if lim is not None else []
    if nature is Nature.GENSET:
        return [float(lim.rating_kw)] if lim is not None else []
    if nature is Nature.METER and lim is not None:
        return [float(lim.max_import_kw), -float(lim.max_export_kw)]
    return []


def nameplate_problems(cfg: SiteConfig, sims: dict[str, DeviceSimulator]) -> list[str]:
    """One line per device whose profile cannot encode its nameplate power (empty: all fit)."""
    problems = []
    for i, d in enumerate(cfg.devices):
        sim = sims.get(d.name)
        if sim is None:
            continue
        for p_kw in nameplate_kw(d, d.nature):
            try:
                sim.set_signal("p_kw", p_kw)
            except (CodecError, ValueError, OverflowError) as exc:
                problems.append(f"devices[{i}] {d.name}: profile {d.profile} cannot report p_kw = {p_kw:g} kW "
                                f"(its nameplate): {exc}")
                break
    return problems
