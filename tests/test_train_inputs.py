"""``gpuload train`` on files as they are shipped: the REAL 500-cell BMMC pair of ../shared/data
as an h5mu written by mudata 0.3 (obs columns only inside the modalities), a 10x ``.h5`` (no
obs, counts in X), one h5ad with 10x's names, and an h5mu with muon's names; each must train
to the end and say what it chose. Short runs (2 epochs, no UMAP): whether the job runs, not
how well it learns."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from gpuload.errors import ArgumentError, SchemaError
from gpuload.reference.config import TrainConfig
from gpuload.reference.inputs import open_training_inputs
from gpuload.reference.train import train
from tests.conftest import REAL_ATAC, REAL_GEX
from tests.tenx_writer import real_as_10x_h5, real_as_10x_h5ad

SHORT = {"epochs": 2, "device": "cpu", "progress": False, "umap": False}


def _trained(data, out, **options) -> tuple[dict, str]:
    metrics = train(data, TrainConfig(out_dir=out, **SHORT, **options))
    assert json.loads((out / "metrics.json").read_text()) == metrics
    return metrics, (out / "report.md").read_text()


def test_real_h5mu_finds_obs_inside_the_modalities(real_h5mu, tmp_path, one_torch_thread):
    m, report = _trained(real_h5mu, tmp_path)
    assert m["inputs_chosen"] == [
        "modalities: GEX = 'GEX', ATAC = 'ATAC'",
        "raw counts: layers['counts']",
        "batch: obs 'GEX:batch'",
        "cell type: obs 'GEX:cell_type'",
        "GEX size factors: obs 'GEX:size_factors'",
    ]
    # s1d1 and s1d2 only: no competition test batch, so a seeded random split
    assert m["split"].startswith("seeded random") and m["n_train"] + m["n_test"] == 500
    assert (m["n_genes"], m["n_peaks"]) == (600, 600) and m["n_cell_types"] > 5
    assert 0 <= m["nmi"] <= 1 and m["asw_batch"] is not None
    assert "What 500 cells can and cannot show" in report and "batch: obs 'GEX:batch'" in report


def test_real_pair_of_files_trains_from_the_command_line(tmp_path, capsys, one_torch_thread):
    """The competition's layout, one h5ad per modality (their cell_type categories in different
    orders), given to the CLI as NAME=PATH pairs."""
    from gpuload.cli import main

    if not (REAL_GEX.exists() and REAL_ATAC.exists()):
        pytest.skip(f"the real starter pair is not in {REAL_GEX.parent}")
    out = tmp_path / "pair"
    argv = ["train", f"GEX={REAL_GEX},ATAC={REAL_ATAC}", "--out", str(out), "--epochs", "2", "--no-umap"]
    assert main([*argv, "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] + m["n_test"] == 500 and m["n_cell_types"] > 5
    assert "modalities: GEX = 'GEX', ATAC = 'ATAC'" in capsys.readouterr().out


def test_real_10x_h5_without_obs_trains_and_says_what_is_missing(real_pair, tmp_path, one_torch_thread):
    path = real_as_10x_h5(real_pair, tmp_path / "filtered_feature_bc_matrix.h5")
    m, report = _trained(path, tmp_path / "out")
    assert m["inputs_chosen"][0] == "modalities: GEX = 'Gene Expression', ATAC = 'Peaks'"
    assert m["inputs_chosen"][1].startswith("raw counts: X: no layers['counts'], and X's Gene Expression")
    assert "every cell is one batch" in m["inputs_chosen"][2]
    assert "label-based metrics are not available" in m["inputs_chosen"][3]
    assert "each cell's GEX total over the mean total" in m["inputs_chosen"][4]
    assert m["split"].startswith("seeded random") and m["n_cell_types"] == 0
    assert m["nmi"] is m["ari"] is m["asw_cell_type"] is m["asw_batch"] is None
    assert np.isfinite([m["gex2atac_rmse"], m["atac2gex_rmse"], m["match_score"]]).all()
    assert "| Joint embedding | ARI | not available |" in report


def test_library_size_factors_are_totals_over_their_mean(real_pair, tmp_path):
    path = real_as_10x_h5(real_pair, tmp_path / "x.h5")
    found = open_training_inputs(path)
    with found.store:
        totals = np.asarray(real_pair[0].layers["counts"].sum(axis=1)).reshape(-1)
        np.testing.assert_allclose(found.size_factors, totals / totals.mean(), rtol=1e-6)
        assert found.obs_keys == []


@pytest.mark.slow
def test_real_h5ad_with_10x_names_and_muon_names(real_pair, tmp_path, one_torch_thread):
    md = pytest.importorskip("mudata")
    real_as_10x_h5ad(real_pair, tmp_path / "tenx.h5ad")
    m, _ = _trained(tmp_path / "tenx.h5ad", tmp_path / "a")
    assert m["inputs_chosen"][:2] == [
        "modalities: GEX = 'Gene Expression', ATAC = 'Peaks'",
        "raw counts: X: no layers['counts'], and X's Gene Expression values are non-negative "
        "integers (500 cells checked)",
    ]
    assert m["inputs_chosen"][2:] == [
        "batch: obs 'batch'",
        "cell type: obs 'cell_type'",
        "GEX size factors: obs 'size_factors'",
    ]
    gex, atac = real_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md.MuData({"rna": gex, "atac": atac}).write(tmp_path / "muon.h5mu")
    m, _ = _trained(tmp_path / "muon.h5mu", tmp_path / "b")
    assert m["inputs_chosen"][:3] == [
        "modalities: GEX = 'rna', ATAC = 'atac'",
        "raw counts: layers['counts']",
        "batch: obs 'rna:batch'",
    ]


def test_modalities_and_counts_errors_name_what_the_data_has(real_pair, real_h5mu, tmp_path):
    with pytest.raises(
        ArgumentError, match=r"--gex 'RNA' is not a modality of the data; it has \['GEX', 'ATAC'\]"
    ):
        open_training_inputs(real_h5mu, gex="RNA")
    chosen = open_training_inputs(real_h5mu, gex="ATAC", atac="GEX", layer="X")
    with chosen.store:
        assert chosen.modalities == {"GEX": "ATAC", "ATAC": "GEX"} and chosen.store.key == "X"
        assert chosen.choices[1] == "raw counts: X (--layer)"
    gex, _ = real_pair
    one = gex.copy()
    one.var["feature_types"] = "Gene Expression"
    one.write_h5ad(tmp_path / "gex_only.h5ad")
    with pytest.raises(SchemaError, match=r"found no ATAC modality among \['Gene Expression'\].*--atac NAME"):
        open_training_inputs(tmp_path / "gex_only.h5ad")
    normalised = gex.copy()  # X holds log-normalised values and there is no counts layer
    del normalised.layers["counts"]
    normalised.var["feature_types"] = ["GEX"] * 300 + ["ATAC"] * 300
    normalised.write_h5ad(tmp_path / "normalised.h5ad")
    with pytest.raises(SchemaError, match=r"normalised.h5ad: training needs raw GEX counts.*--layer NAME"):
        open_training_inputs(tmp_path / "normalised.h5ad")


def test_cli_train_takes_modalities_by_role(real_h5mu, tmp_path, capsys, one_torch_thread):
    from gpuload.cli import main

    out = tmp_path / "cli"
    args = ["train", str(real_h5mu), "--gex", "GEX", "--atac", "ATAC", "--epochs", "1", "--no-umap"]
    assert main([*args, "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "modalities: GEX = 'GEX', ATAC = 'ATAC'" in printed and "report:" in printed
    assert main(["train", str(real_h5mu), "--atac", "Peaks", "--out", str(out)]) == 2
    assert "--atac 'Peaks' is not a modality of the data; it has ['GEX', 'ATAC']" in capsys.readouterr().err


def test_demo_real_says_where_the_data_should_be(tmp_path, capsys):
    from gpuload.reference.demo import main

    assert main(["--real", str(tmp_path / "absent.h5mu"), "--out", str(tmp_path)]) == 2
    assert "absent.h5mu: no such file" in capsys.readouterr().out
