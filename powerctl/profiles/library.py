"""Where profiles come from: a site's own folder first, then the library shipped in the package.

``control.profiles_dir`` holds profiles a user writes (``<vendor>/<model>.yaml``, the same
schema): a profile there with the same key as a shipped one replaces it for that site (a
Victron GX with another VE.Bus unit id, a firmware with other registers) without editing the
package. ``powerctl profiles list`` shows both, and which one a key resolves to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from powerctl.config import _DeviceBase
from powerctl.profiles.model import PROFILE_ROOT, Profile, list_profiles, load_profile, profile_path


@dataclass(frozen=True, slots=True)
class Available:
    key: str
    path: Path
    shipped: bool  # False: from profiles_dir
    shadowed: bool = False  # a shipped profile that the site folder replaces


def site_profile(key: str, profiles_dir: str | Path | None) -> Profile:
    """``key`` from ``profiles_dir`` if that folder has it, else from the shipped library."""
    if profiles_dir is not None and profile_path(key, Path(profiles_dir)).is_file():
        return load_profile(key, Path(profiles_dir))
    return load_profile(key)


def device_profile(device: _DeviceBase, profiles_dir: str | Path | None) -> Profile:
    """The profile of one configured device: ``site_profile`` with the device's own register
    numbers (``registers``) applied; a ``site_address`` setpoint it does not name is not there."""
    return site_profile(device.profile, profiles_dir).for_site(device.registers, f"devices.{device.name}")


def available(profiles_dir: str | Path | None) -> list[Available]:
    """Every profile a site can name, site folder first; shipped ones it replaces are marked."""
    own = list_profiles(Path(profiles_dir)) if profiles_dir is not None and Path(profiles_dir).is_dir() else []
    out = [Available(k, profile_path(k, Path(profiles_dir)), False) for k in own if profiles_dir is not None]
    out += [Available(k, profile_path(k, PROFILE_ROOT), True, shadowed=k in own) for k in list_profiles()]
    return out
