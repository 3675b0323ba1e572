"""sharpgaps: replication library for 'Worker Disagreement Reveals Sharp Directions in Local SGD'.

The package knows nothing of Snakemake: every pipeline step is a function of ``sharpgaps.jobs``,
reached through one CLI entry point (``sharpgaps.cli``).
"""

__version__ = "0.1.0"
