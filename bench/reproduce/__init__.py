"""Reproduce the paper's three claims with the product, and publish the tables as docs/results.md.

    .venv/bin/python -m bench.reproduce            # the full grid; prints its time estimate first
    .venv/bin/python -m bench.reproduce --quick    # a smoke test in minutes: its numbers are not results

Options: ``--out DIR`` (default docs/: writes DIR/results.md and DIR/img/reproduce-*.png), ``--runs-dir DIR``
(runs are kept there, and a later invocation reuses every finished run whose config matches, so an
interrupted grid resumes where it stopped; without it, a temporary store deleted at the end unless
``--keep-runs``).

Everything goes through the product: ``RunConfig`` with each dataset's registry recipe, ``pipeline.execute``
for the runs, the run directory for metrics, timings and predictions, ``masktune_core.selective`` for the
selective study. The only options set here are the method switches (iterations, randmask, threshold rule,
fill) and the seed; ``--quick`` adds one documented override for every run (``QUICK_OVERRIDES``).

The claims under test (the published figures are quoted on the page):
1. MaskTune recovers from a spurious shortcut where ERM fails (biased MNIST).
2. It beats random masking of the same area (RandMask).
3. The ERM and MaskTune models together make a good selective classifier.

Time: the full grid prints its estimate first (an upper bound for an idle 2-core machine) and drops seeds of
the Fashion-MNIST datasets while the estimate exceeds ``BUDGET_S``, saying so on the page. On a machine shared
with other jobs, PyTorch's two threads mostly wait on each other: there ``OMP_NUM_THREADS=1`` ran the same
run about 4x faster (load average 13 on 2 cores).

Nothing is tuned on a test split: checkpoints are selected on val by the pipeline, selective thresholds and
per-class tolerance weights are fitted on val, and test only reports.

Modules, one concern each: ``grid`` (the runs), ``cost`` (time estimate and budget), ``pool`` (running
them), ``analysis`` (results and the selective study), ``stats``, ``claims``, ``plots``, ``markdown`` and the
two ``sections`` modules (the page), ``page`` (putting it together), ``__main__`` (the command line). The
selective-classification maths (per-class weights fitted on val, full- and common-range AURC) is the
engine's, ``masktune_core.selective``; nothing here recomputes it.
"""
