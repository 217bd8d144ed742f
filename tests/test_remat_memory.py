"""Issue 5's long-sequence target, run for real (slow: about half a minute; `pytest -m slow`): a
training step of an LSTM over T = 100,000 steps, B = 8, D = 32, H = 128 with
`lj.unroll(..., remat=True)` stays within 2 GB (2·10⁹ bytes) of process memory (peak resident
set, JAX's runtime included), and its gradient equals the plain mode's, which needs about twice
the memory (3.5 GB here with the native kernel, 5.5 GB on the XLA path: do not run it on a
smaller machine). Each mode runs in a fresh
process, so the peaks are its own. Linux only: `ru_maxrss` is in KiB there."""

import json
import subprocess
import sys

import numpy as np
import pytest

_TRAINING_STEP = """
import json, resource, sys
import jax, jax.numpy as jnp, numpy as np, lstmjax as lj
remat, out = sys.argv[1] == "remat", sys.argv[2]
cell = lj.lstm(128)
params = cell.init(jax.random.PRNGKey(0), 32)
xs = jax.random.normal(jax.random.PRNGKey(1), (100_000, 8, 32))
step = jax.jit(jax.value_and_grad(lambda p, xs: jnp.mean(lj.unroll(cell, p, xs, remat=remat)[1] ** 2)))
loss, grads = jax.block_until_ready(step(params, xs))
np.savez(out, loss=np.asarray(loss), **{k: np.asarray(v) for k, v in grads._asdict().items()})
print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _run(mode: str, out) -> int:
    done = subprocess.run([sys.executable, "-c", _TRAINING_STEP, mode, str(out)], capture_output=True, text=True,
                          timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB only on Linux")
def test_remat_trains_100k_steps_within_2_gb_with_the_plain_gradient(tmp_path):
    remat_peak = _run("remat", tmp_path / "remat.npz")
    plain_peak = _run("plain", tmp_path / "plain.npz")
    assert remat_peak < 2e9, (remat_peak, plain_peak)
    remat, plain = np.load(tmp_path / "remat.npz"), np.load(tmp_path / "plain.npz")
    for name in ("loss", "w_x", "w_h", "b"):
        scale = np.max(np.abs(plain[name]))
        np.testing.assert_allclose(remat[name], plain[name], rtol=0, atol=1e-5 * scale, err_msg=name)
