"""Tables read raw: kinds inferred, IDs and free text excluded with a reason, string labels kept as
class names, preprocessing fitted on the train split only and saved, bad tables refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from trainkit.data import load_data
from trainkit.data.tables import MISSING, OTHER, Preprocess
from trainkit.errors import DataError
from trainkit.run import PREPROCESS, RunFolder, init_run, load_run_data
from trainkit.testing import tiny_config


def churn_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Customers: an ID, a numeric with gaps, a categorical, a boolean, a date, free text, a label."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "customer_id": np.arange(5000, 5000 + n),
        "age": rng.normal(40, 10, n).round(),
        "plan": rng.choice(["basic", "pro", "max"], n, p=[0.5, 0.3, 0.2]),
        "paperless": rng.random(n) < 0.5,
        "signup": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "comment": [f"customer {i} wrote a long free text comment about the service number {i * 7}" for i in range(n)],
    })
    df.loc[rng.choice(n, n // 10, replace=False), "age"] = np.nan
    df.loc[rng.choice(n, n // 20, replace=False), "plan"] = None
    df["churn"] = np.where((df.plan == "basic") & (df.age.fillna(40) > 38), "yes", "no")
    return df


def _cfg(path, **over):
    return tiny_config({"data.source": "parquet" if str(path).endswith(".parquet") else "csv", "data.root": str(path),
                        "data.label": "churn", **{f"data.{k}": v for k, v in over.items()}})


@pytest.fixture
def churn_csv(tmp_path):
    p = tmp_path / "churn.csv"
    churn_frame().to_csv(p, index=False)
    return p


def test_kinds_are_inferred_and_ids_and_free_text_excluded_with_a_reason(churn_csv):
    b = load_data(_cfg(churn_csv))
    t = b.source.table
    assert t.kinds == {"age": "numeric", "plan": "categorical", "paperless": "boolean", "signup": "datetime"}
    why = {e["column"]: e["why"] for e in t.excluded}
    assert "unique per row" in why["customer_id"] and "free text" in why["comment"]
    assert all("data.features" in w for w in why.values())  # each note says how to put it back
    assert b.source.class_names == ["no", "yes"]
    feats = t.preprocess.features
    assert feats[:2] == ["age", "age (missing)"] and f"plan {OTHER}" in feats and f"plan {MISSING}" in feats
    assert {"signup.year", "signup.month", "signup.dayofweek"} <= set(feats) and "signup.hour" not in feats
    assert b.input_shape == (len(feats),)


def test_an_excluded_column_is_put_back_and_a_kind_overridden(churn_csv):
    b = load_data(_cfg(churn_csv, features=["age", "plan", "customer_id"], categorical=["age"]))
    assert b.source.table.kinds == {"age": "categorical", "plan": "categorical", "customer_id": "numeric"}
    assert not any(e["column"] == "customer_id" for e in b.source.table.excluded)


def test_preprocessing_is_fitted_on_the_train_split_only(churn_csv):
    df = pd.read_csv(churn_csv)
    b = load_data(_cfg(churn_csv))
    age = next(c for c in b.source.table.preprocess.columns if c["name"] == "age")
    train_age = df.loc[b.splits["train"], "age"]
    assert age["median"] == pytest.approx(float(train_age.median()))
    assert age["median"] != pytest.approx(float(df["age"].median())) or len(b.splits["val"]) == 0
    filled = train_age.fillna(train_age.median())
    assert age["mean"] == pytest.approx(float(filled.mean())) and age["std"] == pytest.approx(float(filled.std(ddof=0)))
    plan = next(c for c in b.source.table.preprocess.columns if c["name"] == "plan")
    assert plan["vocabulary"][0] == df.loc[b.splits["train"], "plan"].value_counts().index[0]  # most frequent first


def test_unseen_categories_go_to_other_gaps_are_imputed_and_a_missing_column_is_named(churn_csv):
    b = load_data(_cfg(churn_csv))
    pre = Preprocess.from_dict(json.loads(json.dumps(b.source.table.preprocess.to_dict())))  # as saved
    rows = pd.DataFrame({"age": [np.nan, 50.0], "plan": ["enterprise", None], "paperless": [True, False],
                         "signup": ["2022-03-04", "2022-03-05"], "extra": [1, 2]})  # an extra column is ignored
    x = pre.transform(rows)
    names = pre.features
    assert np.isfinite(x).all() and x.shape == (2, len(names))
    assert x[0, names.index("age (missing)")] == 1.0 and x[1, names.index("age (missing)")] == 0.0
    assert x[0, names.index(f"plan {OTHER}")] == 1.0 and x[1, names.index(f"plan {MISSING}")] == 1.0
    with pytest.raises(DataError, match="'plan'"):
        pre.transform(rows.drop(columns=["plan"]))


def test_the_run_saves_the_preprocessing_and_later_phases_use_it(churn_csv, tmp_path):
    run = tmp_path / "run"
    init_run(run)
    cfg = _cfg(churn_csv)
    first = load_run_data(cfg, run, "01_planning", write_splits=True)
    saved = json.loads((RunFolder(run).planning / PREPROCESS).read_text())
    assert saved["version"] == 1 and saved["classes"] == ["no", "yes"] and saved["features"] == first.source.table.preprocess.features
    later = load_run_data(cfg, run, "02_baseline")
    assert later.source.table.preprocess.to_dict() == saved
    assert later.info["fingerprints"] == first.info["fingerprints"]
    assert bool((later._x[later.splits["train"]] == first._x[first.splits["train"]]).all())


def test_a_network_learns_the_table(churn_csv):
    from trainkit.train import fit

    cfg = _cfg(churn_csv)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 25}),
                                 "optimizer": cfg.optimizer.model_copy(update={"name": "adam", "lr": 3e-3})})
    b = load_data(cfg)
    r = fit(cfg, b, None, progress=False)
    majority = np.bincount(b.split_labels("val").numpy()).max() / len(b.splits["val"])
    assert r.best["val_accuracy"] > majority + 0.05


def test_parquet_and_from_dataframe(tmp_path):
    from trainkit import from_dataframe

    data = from_dataframe(churn_frame(200), label="churn", path=tmp_path / "data" / "churn.parquet")
    assert data == {"source": "parquet", "root": str(tmp_path / "data" / "churn.parquet"), "label": "churn"}
    b = load_data(tiny_config({f"data.{k}": v for k, v in data.items()}))
    assert b.source.class_names == ["no", "yes"] and b.source.table.kinds["paperless"] == "boolean"
    with pytest.raises(DataError, match="no column 'nope'"):
        from_dataframe(churn_frame(20), label="nope", path=tmp_path / "x.parquet")


def test_integer_labels_keep_their_values_as_class_names(tmp_path):
    df = churn_frame(300)
    df["churn"] = np.where(df["churn"] == "yes", 7, 3)
    p = tmp_path / "t.csv"
    df.to_csv(p, index=False)
    assert load_data(_cfg(p)).source.class_names == ["3", "7"]


BAD = {
    "missing label column": (lambda df: df.drop(columns=["churn"]), {}, "no column 'churn'.*columns are"),
    "one class": (lambda df: df.assign(churn="no"), {}, "at least 2 classes"),
    "label gaps": (lambda df: df.assign(churn=df["churn"].where(df.index % 50 != 0)), {}, r"12 row\(s\).*drop_unlabelled"),
    "all missing column": (lambda df: df.assign(empty=np.nan), {}, "'empty': every value is missing"),
    "mixed types": (lambda df: df.assign(age=df["age"].astype(object).where(df.index != 7, "unknown")), {},
                    "'age' mixes numbers and text.*'unknown'"),
    "unknown feature": (lambda df: df, {"features": ["age", "nope"]}, "'nope'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tables_are_clear_errors(tmp_path, case):
    change, over, message = BAD[case]
    p = tmp_path / "t.csv"
    change(churn_frame(600)).to_csv(p, index=False)
    with pytest.raises(DataError, match=message):
        load_data(_cfg(p, **over))


def test_label_gaps_are_dropped_only_when_asked(tmp_path):
    p = tmp_path / "t.csv"
    df = churn_frame(600)
    df.assign(churn=df["churn"].where(df.index % 50 != 0)).to_csv(p, index=False)
    assert len(load_data(_cfg(p, drop_unlabelled=True)).source.y) == 588


def test_files_that_are_not_tables(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_data(_cfg(empty))
    fake = tmp_path / "fake.parquet"
    fake.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a readable PARQUET.*data.source: csv"):
        load_data(_cfg(fake))
    with pytest.raises(DataError, match="needs data.label"):
        load_data(tiny_config({"data.source": "csv", "data.root": str(fake)}))
    with pytest.raises(DataError, match="not found"):
        load_data(_cfg(tmp_path / "none.csv"))


@pytest.mark.slow
def test_config_validate_checks_the_table(tmp_path):
    import yaml

    p = tmp_path / "t.csv"
    churn_frame(100).assign(churn="no").to_csv(p, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(p).model_dump(mode="json")))
    r = subprocess.run([sys.executable, "-m", "trainkit.cli", "config", "validate", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and "at least 2 classes" in r.stderr, r.stdout + r.stderr
