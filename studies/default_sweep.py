"""The built-in default sweep (what `phasevae sweep` runs), kept as a reference.

python studies/default_sweep.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    write_summary("default", run_variant("default", "default", "default.toml"))
