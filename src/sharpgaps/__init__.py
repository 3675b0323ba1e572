"""sharpgaps: replication library for 'Worker Disagreement Reveals Sharp Directions in Local SGD'.

The package knows nothing of Snakemake. Its layers, lowest first; a module imports only from its own
layer and the ones below it (tests/test_layers.py):

  core       atomic writes, the flat-vector convention, the run grid, every stage's spec, seed streams
  data       raw files and checksums, readers, the seeded training subsets
  engine     models, losses, the Local SGD engine, training runs and their checkpoints
  curvature  the objective (gradient, HVP, loss), the Lanczos solver, gap subspaces, metrics, geometry
  studies    what is measured on top: restricted runs, estimators, the mechanism, the quadratic theory
  report     RESULTS.md, claim evidence, the figure registry and the notebooks' plotting code
  pipeline   what every job does around its library call, the CLI (``python -m sharpgaps``), config
             validation, the torchrun engine, the Scales tables, manifests and cost notes
"""

__version__ = "0.1.0"
