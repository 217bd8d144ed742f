"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training example writes checkpoints under runs/
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 8, "the README's examples were not found"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert set(namespace["grads"]) == {"cell", "h0", "c0"}
    assert float(abs(namespace["grads"]["h0"]).sum()) > 0
    assert namespace["ys"].shape == (50, 8, 64)
    assert namespace["h_n"].shape == (4, 8, 32)
    history = namespace["history"]
    assert float(history["eval_mse"][-1]) < float(history["eval_mse"][0])
    assert (tmp_path / "runs" / "adding").is_dir()
