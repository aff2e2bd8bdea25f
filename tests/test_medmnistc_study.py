"""What the medmnistc suite measures: MedMNIST-C's summary (BE, rBE), embedding invariance, and
training on one suite evaluated on the other (the adapted-robustness table), on hand-worked rows."""

import numpy as np
import pandas as pd
import pytest
import torch

from medtune.evaluate import METRIC_COLUMNS, evaluate_features
from medtune.methods import zeroshot
from medtune.metrics import classification_metrics
from medtune.studies import clipath, medmnistc
from medtune.tables import write_study_tables

STUDY = {
    "datasets": ["d"], "backbones": ["b", "ref"], "methods": ["zeroshot"], "fractions": [10], "seeds": [1],
    "conditions": ["clean", "pixelate-1", "pixelate-2", "jpeg_compression-1", "hed_shift-1", "blur-1"],
}


def _rows(backbone, method, fraction, seed, values: dict, metric="balanced_accuracy", shots=np.nan):
    return [("d", method, backbone, seed, fraction, shots, condition, "all", metric, v) for condition, v in values.items()]


def test_medmnistc_summary_is_error_be_and_rbe_against_the_reference():
    # errors (1 - balanced accuracy): b clean .1, pixelate .2/.4 (mean .3), jpeg .3, hed .5;
    # the reference: clean .3, pixelate .5/.7 (mean .6), jpeg .6
    data = _rows("b", "zeroshot", np.nan, np.nan, {"clean": 0.9, "pixelate-1": 0.8, "pixelate-2": 0.6, "jpeg_compression-1": 0.7, "hed_shift-1": 0.5, "blur-1": 0.1})
    data += _rows("ref", "zeroshot", np.nan, np.nan, {"clean": 0.7, "pixelate-1": 0.5, "pixelate-2": 0.3, "jpeg_compression-1": 0.4, "hed_shift-1": 0.6})
    metrics = pd.DataFrame(data, columns=METRIC_COLUMNS)
    numbers, pretty, _ = medmnistc.summary_table(metrics, pd.DataFrame(), STUDY, {})
    b = numbers.set_index("backbone").loc["b"]
    assert b["clean"] == pytest.approx(0.1) and b["pixelate"] == pytest.approx(0.3) and b["hed_shift"] == pytest.approx(0.5)
    assert b["mean_corrupted"] == pytest.approx(0.3)  # MedMNIST-C's own corruptions: not the HED shift
    assert b["be"] == pytest.approx(np.mean([0.3 / 0.6, 0.3 / 0.6]))
    assert b["rbe"] == pytest.approx(np.mean([(0.3 - 0.1) / (0.6 - 0.3), (0.3 - 0.1) / (0.6 - 0.3)]))
    ref = numbers.set_index("backbone").loc["ref"]
    assert ref["be"] == pytest.approx(1) and ref["rbe"] == pytest.approx(1)
    assert "blur" not in numbers  # PathCLIP's suite has tables of its own
    assert list(pretty.columns) == ["dataset", "backbone", "model", "clean", "pixelate", "jpeg compression", "hed shift", "mean corrupted", "BE", "rBE"]
    assert pretty.set_index("backbone").loc["b", "pixelate"] == "30.0"
    # another reference backbone; where it loses nothing rBE is undefined, not infinite
    flat = pd.DataFrame(_rows("ref", "zeroshot", np.nan, np.nan, {"pixelate-1": 0.7, "pixelate-2": 0.7, "jpeg_compression-1": 0.7}), columns=METRIC_COLUMNS)
    numbers, _, _ = medmnistc.summary_table(pd.concat([metrics[~metrics["condition"].str.startswith(("pix", "jpeg"))| (metrics["backbone"] == "b")], flat]), pd.DataFrame(), STUDY, {})
    assert np.isnan(numbers.set_index("backbone").loc["b", "rbe"])
    numbers, _, _ = medmnistc.summary_table(metrics, pd.DataFrame(), {**STUDY, "reference_backbone": "b"}, {})
    assert numbers.set_index("backbone").loc["ref", "be"] == pytest.approx(2)


def test_embedding_invariance_table_per_condition_and_backbone(tmp_path):
    data = _rows("b", "zeroshot", np.nan, np.nan, {"pixelate-1": 0.9, "pixelate-2": 0.7, "blur-1": 0.8}, metric="cosine_to_clean")
    data += _rows("ref", "zeroshot", np.nan, np.nan, {"pixelate-1": 0.5, "pixelate-2": 0.3, "blur-1": 0.6}, metric="cosine_to_clean")
    data += _rows("b", "rfc", 10.0, 1, {"pixelate-1": 0.1}, metric="cosine_to_clean")  # not the backbone's own embedding
    metrics = pd.DataFrame(data, columns=METRIC_COLUMNS)
    write_study_tables(metrics, pd.DataFrame(), {"medmnistc": STUDY}, tmp_path)
    table = pd.read_csv(tmp_path / "embedding_invariance.csv").set_index("condition")
    assert list(table.index) == ["pixelate-1", "pixelate-2", "blur-1", "mean pathclip", "mean medmnistc"]
    assert table.loc["pixelate-1", "d/b"] == pytest.approx(0.9) and table.loc["mean medmnistc", "d/ref"] == pytest.approx(0.4)
    assert table.loc["pixelate-2", "corruption"] == "pixelate" and table.loc["pixelate-2", "severity"] == 2
    assert "**0.900**" in (tmp_path / "embedding_invariance.md").read_text()  # the more invariant backbone in bold


def test_evaluation_scores_balanced_accuracy_and_cosine_to_clean():
    labels = np.array([0, 0, 0, 1])
    logits = np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert classification_metrics(labels, logits)["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    from sklearn.metrics import balanced_accuracy_score

    labels3, logits3 = np.array([0, 1, 1, 2, 2, 2]), np.eye(3)[[0, 2, 1, 2, 0, 1]]
    assert classification_metrics(labels3, logits3)["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels3, logits3.argmax(1)))
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(12, 8)).astype(np.float32)
    corrupted = clean + 0.5 * rng.normal(size=(12, 8)).astype(np.float32)
    expected = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(clean, corrupted)])
    head = zeroshot.build_head(zeroshot.state(torch.eye(2, 8), 10.0))
    test = pd.DataFrame({"label": np.arange(12) % 2, "group": ["g"] * 12})
    rows = evaluate_features(head, {"clean": clean, "blur-1": corrupted}, test, {"dataset": "d", "method": "zeroshot", "backbone": "b"})
    cosine = rows[rows["metric"] == "cosine_to_clean"]
    assert list(cosine["condition"]) == ["blur-1"] and cosine["value"].iloc[0] == pytest.approx(expected, abs=1e-6)


def test_adapted_robustness_shows_what_a_model_trained_on_and_its_mean_per_suite():
    study = {"datasets": ["d"], "backbones": ["b"], "methods": ["zeroshot", "rfc", "rfc_aug_medmnistc"], "conditions": ["clean", "blur-1", "blur-2", "pixelate-1"]}
    data = []
    for method, accuracy in (("rfc", {"clean": 0.9, "blur-1": 0.7, "blur-2": 0.5, "pixelate-1": 0.6}), ("rfc_aug_medmnistc", {"clean": 0.9, "blur-1": 0.8, "blur-2": 0.6, "pixelate-1": 0.85})):
        data += _rows("b", method, 10.0, 1, accuracy, metric="accuracy")
    data += _rows("b", "zeroshot", np.nan, np.nan, {"clean": 0.5, "blur-1": 0.4, "blur-2": 0.3, "pixelate-1": 0.45}, metric="accuracy")
    methods = {"rfc": {"label": "RFC", "order": 2, "train_conditions": "clean"}, "rfc_aug_medmnistc": {"label": "RFC aug", "order": 2.5, "train_conditions": "medmnistc"}}
    numbers, pretty, _ = clipath.robustness_table(pd.DataFrame(data, columns=METRIC_COLUMNS), pd.DataFrame(), study, methods)
    table = numbers.set_index("model")
    assert list(numbers.columns) == ["dataset", "backbone", "model", "trained on", "clean", "blur-1", "blur-2", "pixelate-1", "mean pathclip", "mean medmnistc"]
    assert table.loc["rfc_aug_medmnistc@10%", "trained on"] == "medmnistc" and table.loc["rfc@10%", "trained on"] == "clean"
    assert table.loc["zeroshot", "trained on"] == "–"
    # the corruptions it never saw (PathCLIP's blur) next to the clean-trained model's
    assert table.loc["rfc_aug_medmnistc@10%", "mean pathclip"] == pytest.approx(0.7) and table.loc["rfc@10%", "mean pathclip"] == pytest.approx(0.6)
    assert table.loc["rfc@10%", "mean medmnistc"] == pytest.approx(0.6)
    assert pretty.set_index("model").loc["rfc@10%", "mean pathclip"] == "60.0"


def test_medmnistc_summary_keeps_shot_runs_apart_from_fraction_runs():
    values = {"clean": 0.9, "pixelate-1": 0.8, "pixelate-2": 0.6, "jpeg_compression-1": 0.7}
    data = _rows("b", "rfc", 10.0, 1, values) + _rows("b", "rfc", np.nan, 1, {c: v - 0.1 for c, v in values.items()}, shots=2)
    data += _rows("ref", "rfc", 10.0, 1, values) + _rows("ref", "rfc", np.nan, 1, values, shots=2)
    methods = {"rfc": {"label": "RFC", "order": 2, "train_conditions": "clean"}}
    numbers, pretty, _ = medmnistc.summary_table(pd.DataFrame(data, columns=METRIC_COLUMNS), pd.DataFrame(), {**STUDY, "methods": ["rfc"]}, methods)
    b = numbers[numbers["backbone"] == "b"].set_index("shots")
    assert b.loc[2, "clean"] == pytest.approx(0.2) and b.loc[0, "clean"] == pytest.approx(0.1)
    assert b.loc[0, "be"] == pytest.approx(1) and b.loc[2, "be"] > 1  # each against the reference's run on the same subset
    assert list(pretty.loc[pretty["backbone"] == "b", "model"]) == ["RFC @ 2-shot", "RFC @ 10%"]
