"""Benchmark suites, shipped with the package so that ``fastnn bench`` runs them anywhere.

Each suite module (``optim``, ``mlp``) has ``run(device, quick=False, progress=True) ->
list[Result]`` and ``main(argv=None)``; ``bench/<suite>.py`` in the repository runs ``main``.
Every row of a suite is measured in the same process as the others, and the suites report
ratios between them. ``_harness`` holds the timer, the table and the output files.
"""

SUITES = ("optim", "mlp")
