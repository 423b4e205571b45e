"""A spurious-correlation suite: small binary tasks with four kinds of shortcut, in the product's formats.

    python -m bench.suite generate --out DIR                    # the datasets (seeded, offline, ~30 s)
    python -m bench.suite run --data DIR --seeds 0,1,2 --out RUNS [--variants default,topk] [--workers 2]
    python -m bench.suite report --data DIR --runs RUNS --tuning-seeds 0,1,2 --held-out-seeds 10,11,12
    python -m bench.suite all --data DIR --runs RUNS --tuning-seeds ... --held-out-seeds ...   # all three

Datasets: ``generate.SPECS``; variants: ``runner.VARIANTS``; the page: ``docs/suite.md``.
"""
