"""From a run's metrics to its answer, without JAX: the linear VAE's closed forms
(``theory``), piecewise fits and settling (``fit``), the transition estimate with its
two-part interval and the probe (``estimate``), per-curve transitions, cascade,
boundary and scaling (``curves``), what else a curve shows (``readings``), the
advice as a command (``advice``), and the shared thresholds and curve key
(``constants``).

May import: ``phasevae.spec``, ``phasevae.store`` (to read and seal a run),
``phasevae.errors``, ``phasevae.safeio``. Never the engine, the models or the report.
"""
