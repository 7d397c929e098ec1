"""The installable package: the wheel's contents, and cnnlens run from an installed copy.

The wheel is built without a download (hatchling comes from requirements-test.txt) and
installed with ``pip install --no-deps --target``; each run of the installed copy starts
outside the repository with only that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cnnlens.ui.serve import APP_DIR, CONFIG, DASHBOARD, PAGES_DIR, config_flags

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "cnnlens"
_PIP = [sys.executable, "-m", "pip", "--quiet"]

# The same extraction, run once from the checkout and once from the installed copy.
_EXTRACT = """
import sys
from pathlib import Path

import numpy as np
import torch

import cnnlens
from cnnlens import demo_dataset, open_model, to_batch
from cnnlens.ui import serve

root, out = Path(sys.argv[1]).resolve(), sys.argv[2]
assert Path(cnnlens.__file__).resolve().is_relative_to(root), cnnlens.__file__
torch.set_num_threads(1)
dataset = demo_dataset()
names = list(dataset.index["filename"][:8])
batch = to_batch([dataset.load_image(name) for name in names])
maps = open_model("demo").extractor(["conv_2"])(batch)["conv_2"]
np.save(out, maps.numpy())
print("\\n".join([*names, str(serve.DASHBOARD)]))
"""


# The shipped dashboard, run from the installed copy: its home page on the shipped demo,
# then a page found through the shipped pages folder.
_DASHBOARD = """
from streamlit.testing.v1 import AppTest

from cnnlens.ui.serve import DASHBOARD

app = AppTest.from_file(str(DASHBOARD), default_timeout=60).run()
assert not app.exception, app.exception
print(app.title[0].value)
print(next(m.value for m in app.markdown if "labelled images" in m.value))
app.switch_page("pages/feature_maps.py").run()
assert not app.exception, app.exception
print(app.title[0].value)
"""


def _run(args: list[str], cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            *_PIP,
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        timeout=120,
    )
    (built,) = out.glob("cnnlens-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [*_PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        timeout=120,
    )
    return target


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory outside the repository."""
    folder = tmp_path_factory.mktemp("elsewhere")
    assert not folder.resolve().is_relative_to(REPO)
    return folder


def test_the_wheel_holds_the_package_its_data_and_the_app_but_no_other_top_level(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {"cnnlens", "cnnlens-0.1.0.dist-info"}
    shipped = {name for name in names if name.startswith("cnnlens/")}
    in_repo = {
        path.relative_to(REPO).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert in_repo <= shipped  # every file of the package, .js, .css and demo data included
    for name in ("cnnlens/demo/MNIST/train.csv", "cnnlens/demo/demo_cnn.safetensors"):
        assert name in shipped
    assert "cnnlens/ui/map_view.js" in shipped
    assert len([n for n in shipped if n.startswith("cnnlens/demo/MNIST/train/")]) == 4000
    app = {
        "cnnlens/app/dashboard.py",
        "cnnlens/app/.streamlit/config.toml",
        *(f"cnnlens/app/pages/{page.name}" for page in (REPO / "pages").glob("*.py")),
    }
    assert shipped - in_repo == app
    metadata = zipfile.ZipFile(wheel).read("cnnlens-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: torch>=2.11" in metadata.splitlines()
    entry_points = zipfile.ZipFile(wheel).read("cnnlens-0.1.0.dist-info/entry_points.txt")
    assert "cnnlens = cnnlens.cli:main" in entry_points.decode()


def test_an_installed_copy_extracts_what_the_checkout_extracts(site, outside, tmp_path):
    checkout = _run(
        [sys.executable, "-c", _EXTRACT, str(REPO), str(tmp_path / "repo.npy")], REPO, REPO
    )
    installed = _run(
        [sys.executable, "-c", _EXTRACT, str(site), str(tmp_path / "site.npy")], outside, site
    )
    *names, dashboard = installed.stdout.splitlines()
    assert checkout.stdout.splitlines()[:-1] == names
    assert checkout.stdout.splitlines()[-1] == str(REPO / "dashboard.py")
    assert dashboard == str(site / "cnnlens" / "app" / "dashboard.py")
    maps = np.load(tmp_path / "site.npy")
    assert maps.shape == (8, 32, 28, 28)
    assert maps.std() > 0
    np.testing.assert_array_equal(maps, np.load(tmp_path / "repo.npy"))

    # The console script on a handful of the same digits: one mean per channel.
    digits = outside / "digits"
    (digits / "train").mkdir(parents=True)
    index = pd.read_csv(PACKAGE / "demo" / "MNIST" / "train.csv").iloc[:6]
    index.to_csv(digits / "train.csv", index=False)
    for name in index["filename"]:
        (digits / "train" / name).write_bytes((PACKAGE / "demo/MNIST/train" / name).read_bytes())
    out = outside / "digits.parquet"
    command = [str(site / "bin" / "cnnlens"), "extract", str(digits), "--model", "demo"]
    command += ["--layers", "conv_2", "--out", str(out), "--quiet", "--workers", "0"]
    _run(command, outside, site)
    table = pq.read_table(out).to_pandas()
    assert list(table["filename"]) == names[:6]
    assert list(table["label"]) == list(index["label"])
    means = np.stack(table["conv_2"].to_list())
    np.testing.assert_allclose(means, maps[:6].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_the_dashboard_runs_from_an_installed_copy(site, outside):
    done = _run([sys.executable, "-c", _DASHBOARD], outside, site)
    assert done.stdout.splitlines() == [
        "See what a neural network sees",
        "MNIST: 4,000 labelled images, 1,000 unlabelled",
        "Feature maps",
    ]


def test_python_m_cnnlens_help_from_an_installed_copy(site, outside):
    done = _run([sys.executable, "-m", "cnnlens", "--help"], outside, site)
    assert "usage: cnnlens" in done.stdout
    assert "serve" in done.stdout and "extract" in done.stdout


def test_cnnlens_serve_from_an_installed_copy_answers(site, outside):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [str(site / "bin" / "cnnlens"), "serve", "--server.port", str(port)],
        cwd=outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        answer = ""
        while time.monotonic() < deadline and server.poll() is None and answer != "ok":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as reply:
                    answer = reply.read().decode()
            except OSError:
                time.sleep(0.2)
        assert answer == "ok"
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    # The shipped config.toml holds outside the repository: the URL is localhost's.
    assert f"http://localhost:{port}" in log, log


def test_the_app_files_are_the_repositorys_in_a_checkout():
    assert APP_DIR == REPO
    assert DASHBOARD == REPO / "dashboard.py" and DASHBOARD.is_file()
    assert PAGES_DIR == REPO / "pages" and (PAGES_DIR / "home.py").is_file()
    assert CONFIG == REPO / ".streamlit" / "config.toml"


def test_the_config_becomes_flags_and_the_users_flags_win(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[browser]\ngatherUsageStats = false\nserverAddress = "localhost"\n\n'
        '[server]\nport = 8501\nheadless = true\n\n[theme]\nprimaryColor = "#4C3FD1"\n'
        '[theme.sidebar]\nbackgroundColor = "#F3F2FB"\n'
    )
    assert config_flags(config, ["--server.port", "8601", "--theme.primaryColor=#000000"]) == [
        "--browser.gatherUsageStats=false",
        "--browser.serverAddress=localhost",
        "--server.headless=true",
        "--theme.sidebar.backgroundColor=#F3F2FB",
    ]
    flags = config_flags(CONFIG, [])
    assert "--browser.gatherUsageStats=false" in flags
    assert "--browser.serverAddress=localhost" in flags
