"""Benchmark suites, shipped with the package so that ``fastnn bench`` runs them anywhere.

Each suite module (``optim``, ``mlp``, ``dist``) has ``run(device, quick=False, progress=True)``
(``dist`` returns its own rows: configurations of processes rather than competitors) and
``main(argv=None)``; ``bench/<suite>.py`` in the repository runs ``main``.
Every row of the ``optim`` and ``mlp`` suites is measured in the same process as the others,
and they report ratios between them; ``dist``'s configurations are processes of their own. ``_harness`` holds the timer, the table and the output files.
"""

SUITES = ("optim", "mlp", "dist")
