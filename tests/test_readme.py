"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 5, "the README's examples were not found"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["ys"].shape == (50, 8, 64)
    assert set(namespace["grads"]) == {"cell", "h0", "c0"}
    assert float(abs(namespace["grads"]["h0"]).sum()) > 0
