"""Runnable studies built on lstmjax: `python -m experiments.<name> --help`.

Each experiment has a frozen config dataclass (its command line is generated from it by
`experiments._config_cli`), writes `results/<name>/<run>/{config,metrics,summary}.json` and
PNG plots through `experiments._results`, and draws its plots from the JSON alone.
"""
