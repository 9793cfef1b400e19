"""The README's Python quick start runs as written (in a scratch directory)."""

import os
import pathlib
import subprocess
import sys


def test_readme_python_example_runs(tmp_path):
    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    block = readme.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(block)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("b'world' v")
    assert out.stdout.splitlines()[1] == "[50, 240, 255]"
    assert out.stdout.splitlines()[2] == "img2 [40, 140]"
