"""Device profiles (data) and the register codec."""

from powerctl.profiles.model import Point, Profile, ProfileError, Setpoint, list_profiles, load_profile

__all__ = ["Point", "Profile", "ProfileError", "Setpoint", "list_profiles", "load_profile"]
