"""The notebooks execute headless (nbclient), top to bottom, on whatever traces/ holds today, and are
committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_wd_rank.ipynb", "03_bles_penalty.ipynb", "04_device.ipynb",
             "05_own_design.ipynb"]


def test_the_notebooks_are_there_without_outputs():
    assert sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb")) == NOTEBOOKS
    for name in NOTEBOOKS:
        notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name):
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any(output.output_type == "execute_result" for output in outputs)
