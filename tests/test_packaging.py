"""A regular (non-editable) wheel carries the config tree and the built-in plugins."""

import os
import subprocess
import sys
import zipfile

from tests.common import ROOT


def test_wheel_ships_conf_and_plugins_and_runs_from_anywhere(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("sllmx-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sllmx/conf/config.yaml" in names and "sllmx/conf/model/smollm2-135m.yaml" in names
    assert "sllmx_plugins/methods.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "sllmx_plugins.methods" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import sllmx.conf, sllmx_plugins; print(sllmx.conf.__file__);"
                            "print(sllmx_plugins.__file__)"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(path.startswith(str(site)) for path in where)
    proc = subprocess.run([sys.executable, "-m", "sllmx", "method=dora", "--cfg", "job"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "name: dora" in proc.stdout and "source: gguf" in proc.stdout
