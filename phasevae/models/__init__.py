"""The models: the protocol every model meets, the MLP VAE (``vae``), the conv VAE,
the hyperspherical latent, and the one place a sweep's model is built
(``registry``), with the callables a spec may name (``plugins``).

May import: ``phasevae.spec``, ``phasevae.errors`` (and JAX, Flax). Never the engine,
the store, the analysis or the report.
"""
