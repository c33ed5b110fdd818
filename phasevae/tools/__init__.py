"""Work built on the engine and the analysis together: ``locate`` (stages of sweeps
to a trusted, sharp answer), the validation suite (``validate`` over ``cases``) and
the benchmark (``bench``).

May import every package but ``phasevae.cli``.
"""
