"""`lj.tune_cpu_allocator`: a bad argument is refused by name, and on glibc a training step stops
page-faulting its temporaries back in. Page faults are counted in fresh processes, so this test's
own heap and settings do not leak into them; speed is measured in `experiments.benchmark`."""

import json
import subprocess
import sys

import pytest

import lstmjax as lj
from lstmjax._allocator import _glibc

_FAULTS_PER_STEP = """
import json, resource, sys
import jax, jax.numpy as jnp, numpy as np, lstmjax as lj
tuned = lj.tune_cpu_allocator() if sys.argv[1] == "tuned" else None
cell = lj.lstm(256)
cell = cell._replace(fused=cell.fused._replace(native=None))  # the XLA path: a 40.7 MiB block
key = jax.random.PRNGKey(0)
params, xs = cell.init(key, 32), jax.random.normal(key, (100, 32, 32))
step = jax.jit(jax.value_and_grad(lambda p, xs: jnp.mean(lj.unroll(cell, p, xs)[1] ** 2)))
for _ in range(8):  # compile, and let the heap settle
    jax.block_until_ready(step(params, xs))
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(params, xs))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "median_faults_per_step": float(np.median(faults))}))
"""


def _faults_per_step(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, mode], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("top_pad_mib", [-1, 1025, 1.5, True, "64", None])
def test_a_bad_top_pad_is_refused_by_name(top_pad_mib):
    with pytest.raises(ValueError, match=r"top_pad_mib must be an int from 0 to 1024 \(MiB\), got"):
        lj.tune_cpu_allocator(top_pad_mib)


@pytest.mark.skipif(_glibc() is None, reason="tune_cpu_allocator only changes glibc's malloc")
def test_a_training_step_stops_page_faulting_its_temporaries():
    """A B = 32, T = 100, H = 256 LSTM step on the XLA path has its temporaries in one 40.7 MiB block,
    which glibc maps and unmaps every step by default (over 32 MiB, its largest mmap threshold);
    tuned, the block is kept in the heap between steps. (The native kernels' step there needs 21.9
    MiB, which glibc keeps on some steps and not others: in four processes 3-5 of 10 steps faulted
    5,300-6,100 times, medians 0 to 2,787. So this test pins the XLA path, whose block is always
    mapped afresh.)"""
    plain = _faults_per_step("plain")["median_faults_per_step"]
    if plain < 1000:
        pytest.skip(f"this machine's malloc already keeps the block ({plain:.0f} page faults a step)")
    tuned = _faults_per_step("tuned")
    assert tuned["tuned"] is True
    assert tuned["median_faults_per_step"] < plain / 10, (tuned, plain)
