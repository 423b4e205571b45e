"""A spurious-correlation suite: small binary tasks with four kinds of shortcut, in the product's formats.

    python -m bench.suite generate --out DIR       # writes the datasets (seeded, offline, seconds)
    python -m bench.suite run --data DIR --seeds 0,1,2 --out RUNSDIR
    python -m bench.suite report --runs RUNSDIR --data DIR

See ``bench/suite/generate.py`` for the datasets and ``docs/suite.md`` for the results.
"""
