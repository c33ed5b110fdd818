"""Training: the pure vmapped chunk (``step``), the grid, point ids and shards
(``grid``), devices and the compiled program (``devices``), the schedule's policies
(``schedule``), THE chunk loop (``loop``), and a sweep end to end with merging
(``sweep``).

May import: ``phasevae.spec``, ``phasevae.data``, ``phasevae.models``,
``phasevae.store``, ``phasevae.errors``, ``phasevae.safeio``. It reaches the analysis
only through the policies (``schedule``: refinement and ``until``, which read the
estimate), apart from the pure closed forms and thresholds (``analysis.theory``,
``analysis.constants``). Never the report or the tools.
"""
