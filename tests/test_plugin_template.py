"""The plugin template round trip: a fresh virtual environment, a real pip install of
plugin_template/, the host sees its plugin and backbone, its own tests pass, and after
`transferkit uninstall` it is gone."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # each test starts processes (pip, python -m)


ROOT = Path(__file__).resolve().parents[1]


def run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERKIT_")}
    env["PIP_NO_INDEX"] = "1"  # everything needed is already installed: never reach a network
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(python), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.mark.slow
def test_install_list_and_uninstall_the_template(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # give the fresh environment access to the packages installed for the project
    parents = [p for p in site.getsitepackages() + sys.path if p.endswith("site-packages")]
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(parents))
    (Path(purelib.stdout.strip()) / "_project_packages.pth").write_text(lines)

    plugin_dir = tmp_path / "my-plugin"
    shutil.copytree(ROOT / "plugin_template", plugin_dir)
    installed = run(
        python, "-m", "transferkit", "install", "--no-build-isolation", "--no-deps", str(plugin_dir)
    )
    assert "example 0.1.0: backbone example-cnn, classifier example-centroid" in installed.stdout

    plugins = json.loads(run(python, "-m", "transferkit", "plugins", "--json").stdout)
    assert [(p["name"], p["version"], p["status"]) for p in plugins] == [
        ("example", "0.1.0", "loaded")
    ]
    assert plugins[0]["hooks"] == ["register_backbones", "register_classifiers"]
    assert plugins[0]["distribution"] == "transferkit-example-plugin"
    backbones = json.loads(run(python, "-m", "transferkit", "backbones", "--json").stdout)
    example = [b for b in backbones if b["name"] == "example-cnn"]
    assert example and example[0]["plugin"] == "example"
    assert example[0]["feature_dims"] == {"avg": 32, "max": 32, "flatten": 2048}

    # the template's own tests pass against the installed plugin
    run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=plugin_dir)

    # by the plugin name `plugins` shows; a second time there is nothing to uninstall: exit 1
    gone = run(python, "-m", "transferkit", "uninstall", "example")
    assert "Uninstalled: transferkit-example-plugin" in gone.stdout
    assert json.loads(run(python, "-m", "transferkit", "plugins", "--json").stdout) == []
    again = subprocess.run(
        [str(python), "-m", "transferkit", "uninstall", "transferkit-example-plugin"],
        capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"}, timeout=600,
    )  # fmt: skip
    assert again.returncode == 1 and "nothing was uninstalled" in again.stderr
    backbones = json.loads(run(python, "-m", "transferkit", "backbones", "--json").stdout)
    assert "example-cnn" not in {b["name"] for b in backbones}
