"""What a user reads of an analysed run: the figures (``figbase`` reads the run,
``figures`` and ``diagrams`` draw), the HTML report (``html``), the analysis as text
(``text``) and the experiment trackers (``trackers``).

May import: ``phasevae.analysis``, ``phasevae.store``, ``phasevae.spec``,
``phasevae.errors``, ``phasevae.safeio``. Never the engine, the models or the tools.
"""
