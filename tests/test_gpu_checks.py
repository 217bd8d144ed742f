"""experiments/gpu_checks.sh, the GPU checks of issue 5 prepared for a machine with a GPU: it must not rot
while no GPU is at hand. Its shell parses, every test file it names exists, and the command lines it gives the
benchmark and the seeds benchmark parse with their own configuration (a renamed flag fails here, not on a
GPU lent for a few minutes)."""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

from experiments import benchmark, seeds_benchmark
from experiments._config_cli import parse_config

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "gpu_checks.sh"


def _commands() -> list[list[str]]:
    """Every `step` line of the script as words, continuation lines joined, its variables given example values."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    points = re.search(r"points=\$\{GPU_CHECKS_POINTS:-([^}]*)\}", text).group(1)
    commands = []
    for line in text.splitlines():
        if line.startswith("step ") and " python3 -m " in line:
            line = line.replace("$points", points).replace('"$repeats"', "10").replace('"$scratch"', "/tmp/x")
            commands.append(shlex.split(line.replace('"$out/', '"/tmp/out/')))
    return commands


def test_the_script_parses_and_names_what_exists():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    named = [word for command in _commands() for word in command if word.startswith("tests/")]
    assert len(named) >= 5
    for path in named:
        assert (SCRIPT.parents[1] / path).is_file(), path


def test_its_steps_fit_in_one_device_command():
    """The device tool runs one command for at most 600 s: the steps' limits (and their 10 s grace to be
    killed) leave half a minute for the copies around them."""
    limits = [int(m.group(1)) for m in re.finditer(r"^step \S+ (\d+) ", SCRIPT.read_text(), re.MULTILINE)]
    assert len(limits) == 4
    assert sum(limits) + 10 * len(limits) <= 600 - 30, limits


@pytest.mark.parametrize("module, config", [("experiments.benchmark", benchmark.BenchmarkConfig),
                                            ("experiments.seeds_benchmark", seeds_benchmark.SeedsBenchmarkConfig)])
def test_its_experiment_command_lines_parse(module, config):
    (command,) = [c for c in _commands() if module in c]
    argv = command[command.index(module) + 1:]
    parsed = parse_config(config, argv)
    if module == "experiments.benchmark":
        assert parsed.gpu_precision == "float32" and len(parsed.points) >= 3
