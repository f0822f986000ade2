"""``import gpuload`` loads the loader and its readers only: the writers, the reference model's
libraries and the integrations' frameworks load when their own module is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gpuload

ROOT = Path(__file__).resolve().parents[1]

# Never loaded by ``import gpuload``. anndata reads obs/var on the first open (``formats.frames``),
# so neither its readers nor its writers load at import.
HEAVY = ("anndata", "matplotlib", "sklearn", "umap", "cudf", "nvidia.dali", "lightning", "scvi", "mudata")
# ``import torch`` itself loads tqdm when it is installed (torch.hub): what gpuload must not add.
NOT_ADDED = ("tqdm",)

PROBE = """
import json, sys
import torch
after_torch = set(sys.modules)
import gpuload
print(json.dumps({"all": sorted(sys.modules), "added": sorted(set(sys.modules) - after_torch)}))
"""


def _loaded(names: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in names if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_import_gpuload_loads_no_heavy_module():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    modules = json.loads(out.stdout.splitlines()[-1])
    assert not _loaded(modules["all"], HEAVY), _loaded(modules["all"], HEAVY)
    assert not _loaded(modules["added"], NOT_ADDED), _loaded(modules["added"], NOT_ADDED)


def test_public_names_resolve():
    for name in gpuload.__all__:
        assert getattr(gpuload, name) is not None, name
    assert set(gpuload.__all__) <= set(dir(gpuload))


def test_package_ships_its_type_marker():
    assert (ROOT / "gpuload" / "py.typed").is_file()


# The base install without the train extra: scikit-learn, umap-learn and matplotlib cannot be found.
WITHOUT_TRAIN_EXTRA = """
import sys
from importlib.abc import MetaPathFinder

class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sklearn", "umap", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from gpuload.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli_without_train_extra(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *argv]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_runs_without_the_train_extra():
    """The command's parser (synth, info, bench, train) builds on the base install; ``gpuload train``
    names the extra it needs."""
    shown = _cli_without_train_extra("--help")
    assert shown.returncode == 0, shown.stderr
    train = _cli_without_train_extra("train", "data.h5ad")
    assert train.returncode == 2, train.stderr
    assert "pip install 'gpuload[train]'" in train.stderr
