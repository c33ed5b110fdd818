"""Sweep specs, shipped in the package as ``phasevae.sweeps`` (default.toml)."""
