"""`lj.tune_cpu_allocator`: bad arguments are refused by name, and on glibc a training step stops
page-faulting its temporaries back in (counted in a fresh process, so this test's own settings
and heap do not leak into it). Its speed is measured in `experiments.benchmark`, not here."""

import json
import subprocess
import sys

import pytest

import lstmjax as lj
from lstmjax._allocator import _glibc

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="tune_cpu_allocator only changes glibc's malloc")

_FAULTS_PER_STEP = """
import json, resource, sys
import jax, jax.numpy as jnp, lstmjax as lj
tuned = lj.tune_cpu_allocator() if sys.argv[1] == "tuned" else None
cell = lj.lstm(256)
key = jax.random.PRNGKey(0)
params, xs = cell.init(key, 32), jax.random.normal(key, (100, 32, 32))
step = jax.jit(jax.value_and_grad(lambda p, xs: jnp.mean(lj.unroll(cell, p, xs)[1] ** 2)))
for _ in range(3):
    jax.block_until_ready(step(params, xs))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    jax.block_until_ready(step(params, xs))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"tuned": tuned, "faults_per_step": faults}))
"""


def _faults_per_step(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, mode], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"top_pad_mib": -1}, "top_pad_mib"), ({"top_pad_mib": 1025}, "top_pad_mib"),
    ({"top_pad_mib": 1.5}, "top_pad_mib"), ({"top_pad_mib": True}, "top_pad_mib"),
    ({"top_pad_mib": "64"}, "top_pad_mib"), ({"mmap_threshold_mib": 0}, "mmap_threshold_mib"),
    ({"mmap_threshold_mib": 33}, "mmap_threshold_mib"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name} must be an int from \d+ to \d+ \(MiB\), got"):
        lj.tune_cpu_allocator(**kwargs)


@needs_glibc
def test_a_training_step_stops_page_faulting_its_temporaries():
    """An H = 256, T = 100, B = 32 LSTM step has tens of MiB of temporaries (about 10,000 page faults
    a step with glibc's defaults on this project's machine); tuned, it keeps them between steps."""
    tuned = _faults_per_step("tuned")
    assert tuned["tuned"] is True
    assert tuned["faults_per_step"] < 1000, (tuned, _faults_per_step("plain"))
