"""The notebooks in notebooks/ run from top to bottom without an error.

Each notebook is executed with nbclient in a fresh kernel ("python3" from the ipykernel installed
in the same environment as pytest), in a temporary working directory so that nothing it writes
lands in the repository. A failing cell fails the test with that cell's source and traceback.
"""

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbformat, nbclient and ipykernel")
pytest.importorskip("ipykernel", reason="the notebook tests need nbformat, nbclient and ipykernel")

from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT_S = 180  # each notebook runs in well under a minute; this only catches a hang


def execute(nb, cwd: pathlib.Path):
    """Runs `nb` in place in a fresh kernel started in `cwd`; raises CellExecutionError on a failing cell."""
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def test_every_notebook_is_tested():
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["quickstart", "statquest", "vanishing_gradients"]


def test_kernel_is_this_python(tmp_path):
    """The kernel is the interpreter running pytest, so it sees this environment's lstmjax."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    execute(nb, tmp_path)
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert pathlib.Path(printed).resolve() == pathlib.Path(sys.executable).resolve()


@pytest.mark.parametrize("name", ["quickstart", "statquest", "vanishing_gradients"])
def test_notebook_runs(name, tmp_path):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:  # outputs are not committed
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"
    try:
        execute(nb, tmp_path)
    except CellExecutionError as error:
        pytest.fail(f"{path.name}: a cell failed:\n{error}", pytrace=False)
    assert not list(tmp_path.iterdir()), f"{path.name} wrote into its working directory"
