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
from conftest import trainkit_here  # noqa: E402 (the tests folder is on sys.path)
from trainkit.run import PREPROCESS, RunFolder, init_run, load_run_data
from trainkit.testing import tiny_config


def churn_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Customers: an ID, a numeric with gaps, a categorical, a boolean, a date, free text, a label."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(5000, 5000 + n),
            "age": rng.normal(40, 10, n).round(),
            "plan": rng.choice(["basic", "pro", "max"], n, p=[0.5, 0.3, 0.2]),
            "paperless": rng.random(n) < 0.5,
            "signup": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "comment": [
                f"customer {i} wrote a long free text comment about the service number {i * 7}" for i in range(n)
            ],
        }
    )
    df.loc[rng.choice(n, n // 10, replace=False), "age"] = np.nan
    df.loc[rng.choice(n, n // 20, replace=False), "plan"] = None
    df["churn"] = np.where((df.plan == "basic") & (df.age.fillna(40) > 38), "yes", "no")
    return df


def _cfg(path, **over):
    return tiny_config(
        {
            "data.source": "parquet" if str(path).endswith(".parquet") else "csv",
            "data.root": str(path),
            "data.label": "churn",
            **{f"data.{k}": v for k, v in over.items()},
        }
    )


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
    assert "identifier" in why["customer_id"] and "free text" in why["comment"]
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
    rows = pd.DataFrame(
        {
            "age": [np.nan, 50.0],
            "plan": ["enterprise", None],
            "paperless": [True, False],
            "signup": ["2022-03-04", "2022-03-05"],
            "extra": [1, 2],
        }
    )  # an extra column is ignored
    x = pre.transform(rows)
    names = pre.features
    assert np.isfinite(x).all() and x.shape == (2, len(names))
    assert x[0, names.index("age (missing)")] == 1.0 and x[1, names.index("age (missing)")] == 0.0
    assert x[0, names.index(f"plan {OTHER}")] == 1.0 and x[1, names.index(f"plan {MISSING}")] == 1.0
    with pytest.raises(DataError, match="'plan'"):
        pre.transform(rows.drop(columns=["plan"]))


def test_a_numeric_category_matches_however_the_new_rows_write_it(tmp_path):
    df = churn_frame(300)
    df["store"] = np.where(np.arange(300) % 3 == 0, 7, 12).astype(float)
    df.loc[::10, "store"] = np.nan  # gaps: pandas reads the column as floats, "7.0"
    df.to_csv(tmp_path / "t.csv", index=False)
    pre = load_data(_cfg(tmp_path / "t.csv", categorical=["store"])).source.table.preprocess
    rows = df.head(4).assign(store=pd.array([7, 12, 7, 99], dtype="Int64"))  # new rows without gaps: "7"
    x, names = pre.transform(rows), pre.features
    assert [x[i, names.index(f)] for i, f in enumerate(["store=7.0", "store=12.0", "store=7.0", f"store {OTHER}"])] == [
        1.0
    ] * 4


def test_text_padded_with_spaces_is_the_same_class_and_the_same_category(tmp_path):
    """An export that writes "yes " in some rows and "yes" in others (a fixed-width column, a
    hand-edited sheet): one class, one category, in training and in new rows alike."""
    df = churn_frame(300)
    pad = np.arange(300) % 2 == 0
    df.loc[pad, "churn"] = df.loc[pad, "churn"] + " "
    df.loc[pad, "plan"] = " " + df.loc[pad, "plan"]
    df.to_csv(tmp_path / "t.csv", index=False)
    b = load_data(_cfg(tmp_path / "t.csv"))
    assert b.source.class_names == ["no", "yes"]
    pre = b.source.table.preprocess
    assert {f for f in pre.features if f.startswith("plan=")} == {"plan=basic", "plan=pro", "plan=max"}
    rows = churn_frame(4).assign(plan=["basic", " basic ", "pro  ", "gold"])
    x, names = pre.transform(rows), pre.features
    hits = [x[i, names.index(f)] for i, f in enumerate(["plan=basic", "plan=basic", "plan=pro", f"plan {OTHER}"])]
    assert hits == [1.0] * 4


def test_the_run_saves_the_preprocessing_and_later_phases_use_it(churn_csv, tmp_path):
    run = tmp_path / "run"
    init_run(run)
    cfg = _cfg(churn_csv)
    first = load_run_data(cfg, run, "01_planning", write_splits=True)
    saved = json.loads((RunFolder(run).planning / PREPROCESS).read_text())
    assert (
        saved["version"] == 1
        and saved["classes"] == ["no", "yes"]
        and saved["features"] == first.source.table.preprocess.features
    )
    later = load_run_data(cfg, run, "02_baseline")
    assert later.source.table.preprocess.to_dict() == saved
    assert later.info["fingerprints"] == first.info["fingerprints"]
    assert bool((later._x[later.splits["train"]] == first._x[first.splits["train"]]).all())


@pytest.mark.slow  # trains
def test_a_network_learns_the_table(churn_csv):
    from trainkit.train import fit

    cfg = _cfg(churn_csv)
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(update={"epochs": 25}),
            "optimizer": cfg.optimizer.model_copy(update={"name": "adam", "lr": 3e-3}),
        }
    )
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
    "label column spelt otherwise": (lambda df: df.rename(columns={"churn": "Churn "}), {}, "did you mean 'Churn '"),
    "one class": (lambda df: df.assign(churn="no"), {}, "at least 2 classes"),
    "label gaps": (
        lambda df: df.assign(churn=df["churn"].where(df.index % 50 != 0)),
        {},
        r"12 row\(s\).*drop_unlabelled",
    ),
    "all missing column": (lambda df: df.assign(empty=np.nan), {}, "'empty': every value is missing"),
    "mixed types": (
        lambda df: df.assign(age=df["age"].astype(object).where(df.index != 7, "unknown")),
        {},
        "'age' mixes numbers and text.*'unknown'",
    ),
    "unknown feature": (lambda df: df, {"features": ["age", "nope"]}, "'nope'"),
    "continuous label": (
        lambda df: df.assign(churn=np.linspace(0, 1, len(df)) ** 2),
        {},
        "a quantity, not classes.*rmse, mae or r2.*data.categorical",
    ),
    "an ID as the label": (
        lambda df: df.assign(churn=[f"c{i * 2 // 3}" for i in range(len(df))]),
        {},
        "400 distinct values in 600 rows.*single row",
    ),
    "classes too small to split": (
        lambda df: df.assign(churn=[f"c{i // 2}" for i in range(len(df))]),
        {},
        "300 classes.*2 rows a class.*none in",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tables_are_clear_errors(tmp_path, case):
    change, over, message = BAD[case]
    p = tmp_path / "t.csv"
    change(churn_frame(600)).to_csv(p, index=False)
    with pytest.raises(DataError, match=message):
        load_data(_cfg(p, **over))


def _export_frame() -> pd.DataFrame:
    df = churn_frame(300).drop(columns=["comment", "customer_id"])
    df["spend"] = np.random.default_rng(1).normal(50, 20, len(df)).round(2)
    df["plan"] = df["plan"].replace({"max": "médium"})  # a character outside ASCII
    return df


def _features(path) -> tuple[np.ndarray, list[str], list[str]]:
    b = load_data(_cfg(path))
    x, _ = b.arrays("train")
    return x.numpy(), b.source.table.preprocess.features, b.source.table.read_notes


@pytest.mark.parametrize(
    "fmt", ["semicolons, decimal commas, Windows-1252", "gzip, semicolons", "tabs", "spaces after commas"]
)
def test_csv_exports_as_spreadsheets_and_databases_write_them_read_as_the_same_table(tmp_path, fmt):
    df = _export_frame()
    df.to_csv(tmp_path / "plain.csv", index=False)
    p = tmp_path / "export.csv"
    if fmt.startswith("semicolons"):
        df.to_csv(p, index=False, sep=";", decimal=",", encoding="cp1252")
        want = [
            "columns separated by ';'",
            "read as cp1252 (the file is not valid UTF-8)",
            "decimal commas (1,5 = 1.5)",
        ]
    elif fmt == "gzip, semicolons":
        p = tmp_path / "export.csv.gz"
        df.to_csv(p, index=False, sep=";")
        want = ["columns separated by ';'"]
    elif fmt == "tabs":
        df.to_csv(p, index=False, sep="\t")
        want = ["columns separated by a tab"]
    else:
        p.write_text((tmp_path / "plain.csv").read_text().replace(",", ", "))
        want = []
    x, names, notes = _features(p)
    x0, names0, notes0 = _features(tmp_path / "plain.csv")
    assert notes0 == [] and notes == want
    assert names == names0 and "plan=médium" in names  # the same columns, categories and encoding
    np.testing.assert_allclose(x, x0, rtol=1e-6, atol=1e-6)


def test_placeholders_for_a_gap_in_a_numeric_column_are_gaps_and_said_so(tmp_path):
    df = _export_frame()
    df.to_csv(tmp_path / "plain.csv", index=False)
    marked = df.astype({"age": object})
    marked.loc[marked["age"].isna(), "age"] = ["?", " - "] * int(marked["age"].isna().sum() // 2) + ["?"] * int(
        marked["age"].isna().sum() % 2
    )
    marked.to_csv(tmp_path / "marked.csv", index=False)
    b = load_data(_cfg(tmp_path / "marked.csv"))
    table = b.source.table
    assert table.kinds["age"] == "numeric" and "'?'" in table.notes["age"] and "read as missing" in table.notes["age"]
    x0, names0, _ = _features(tmp_path / "plain.csv")
    np.testing.assert_allclose(b.arrays("train")[0].numpy(), x0, rtol=1e-6, atol=1e-6)
    assert table.preprocess.transform(pd.DataFrame(marked.head(3))).shape == (3, len(names0))  # new rows: the same
    # a word is not a placeholder: still the clear error
    marked.loc[5, "age"] = "about forty"
    marked.to_csv(tmp_path / "word.csv", index=False)
    with pytest.raises(DataError, match="'age' mixes numbers and text.*'about forty'"):
        load_data(_cfg(tmp_path / "word.csv"))


def test_numbers_written_as_money_thousands_and_percentages_are_read_as_numbers(tmp_path, monkeypatch):
    """An export's "$1,234.50", "-€ 80" and "12.5%" are the quantities, not an ID or 300 categories:
    kinds, transform, predict's notes and the deployment guide's raw-row snippet read them alike."""
    import re

    from trainkit.data.number_text import PATTERN, parse_numbers
    from trainkit.phases.raw_rows import _SECTION

    df = _export_frame()
    df["spend"] = df["spend"] * 40  # thousands: 2,000.40
    df.to_csv(tmp_path / "plain.csv", index=False)
    shown = df.astype({"spend": object, "age": object})
    shown["spend"] = [f"-${-v:,.2f}" if v < 0 else f"${v:,.2f}" for v in df["spend"]]
    shown["age"] = [None if pd.isna(v) else f"{v:g}%" for v in df["age"]]  # a share, as a report writes it
    shown.to_csv(tmp_path / "shown.csv", index=False)
    b = load_data(_cfg(tmp_path / "shown.csv"))
    table = b.source.table
    assert table.kinds["spend"] == "numeric" and table.kinds["age"] == "numeric", table.kinds
    assert "'$" in table.notes["spend"] and "read as numbers" in table.notes["spend"] and "%'" in table.notes["age"]
    x0, names0, _ = _features(tmp_path / "plain.csv")
    assert table.preprocess.features == names0
    np.testing.assert_allclose(b.arrays("train")[0].numpy(), x0, rtol=1e-6, atol=1e-6)  # the same numbers
    # a decimal comma is not a thousands comma: "1,5" is no formatted number (the reader's decimal handles it)
    tricky = ["$1,234.50", "-€ 80", "€-80", "+12.5 %", "1,000,000", "12%", "80 €", "7", "1,5", "1,23,456", "$", "12e3"]
    got, formatted = parse_numbers(pd.Series(tricky + ["1.2.3", "€80€80"]))
    want = [1234.5, -80.0, -80.0, 12.5, 1e6, 12.0, 80.0, 7.0, None, None, None, 12e3, None, None]
    assert [None if np.isnan(v) else v for v in got] == want and formatted.sum() == 7
    tricky += ["1.2.3", "€80€80"]
    # the guide's snippet (no pandas, no trainkit) carries the same pattern and reads the same numbers
    code = re.findall(r"```python\n(.*?)```", _SECTION, re.S)[0].format(
        mean=[0.0], std=[1.0], rows="rows.csv", tail="", pattern=repr(PATTERN)
    )
    (tmp_path / "preprocess.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code.split("def numeric(")[0], scope)
    snippet = [scope["number"](t) for t in tricky]
    assert [None if np.isnan(v) else v for v in snippet] == want
    # a regression label in dollars is a quantity in dollars
    money = pd.DataFrame({"rooms": np.arange(60) % 5, "price": [f"${1000 + 250 * i:,}" for i in range(60)]})
    money.to_csv(tmp_path / "money.csv", index=False)
    reg = load_data(
        tiny_config(
            {
                "data.source": "csv",
                "data.root": str(tmp_path / "money.csv"),
                "data.label": "price",
                "target.metric": "rmse",
                "target.value": 100.0,
            }
        )
    )
    assert reg.regression and reg.label_scale["mean"] == pytest.approx(
        np.mean([1000 + 250 * i for i in np.array(reg.splits["train"])]), rel=1e-9
    )


def test_parquet_column_types_of_databases_and_pandas_are_encoded(tmp_path):
    """Decimal (a database's NUMERIC), nullable Int64 and boolean with gaps, a time zone, a category with gaps."""
    import decimal

    n, rng = 200, np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "count": pd.array(
                [None if i % 9 == 0 else int(v) for i, v in enumerate(rng.integers(0, 50, n))], dtype="Int64"
            ),
            "flag": pd.array(
                [None if i % 7 == 0 else bool(v) for i, v in enumerate(rng.random(n) < 0.5)], dtype="boolean"
            ),
            "amount": [decimal.Decimal(str(round(v, 2))) for v in rng.normal(10, 3, n)],
            "at": pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Paris"),
            "colour": pd.Categorical(rng.choice(["red", "blue", None], n)),
            "churn": rng.choice(["yes", "no"], n),
        }
    )
    df.to_parquet(tmp_path / "t.parquet")
    b = load_data(_cfg(tmp_path / "t.parquet"))
    table = b.source.table
    assert table.kinds == {
        "count": "numeric",
        "flag": "boolean",
        "amount": "numeric",
        "at": "datetime",
        "colour": "categorical",
    }
    x = table.preprocess.transform(df.head(20))
    assert np.isfinite(x).all() and x.shape[1] == len(table.preprocess.features)
    assert np.allclose(
        x[:, table.preprocess.features.index("amount")] * table.preprocess.columns[2]["std"]
        + table.preprocess.columns[2]["mean"],
        df["amount"].head(20).astype(float),
    )


def test_a_file_without_a_header_row_is_named_as_such(tmp_path):
    p = tmp_path / "headless.csv"
    churn_frame(100)[["age"]].fillna(1).assign(b=2.5, churn=1).to_csv(p, index=False, header=False)
    with pytest.raises(DataError, match="no column 'churn'.*no header row"):
        load_data(_cfg(p))


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
    for name, head in (("book.xlsx", b"PK\x03\x04rest"), ("old.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest")):
        (tmp_path / name).write_bytes(head)
        with pytest.raises(DataError, match="an Excel workbook.*save the sheet as CSV.*read_excel"):
            load_data(_cfg(tmp_path / name))


@pytest.mark.slow
def test_config_validate_checks_the_table(tmp_path):
    import yaml

    p = tmp_path / "t.csv"
    churn_frame(100).assign(churn="no").to_csv(p, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(p).model_dump(mode="json")))
    r = trainkit_here("config", "validate", cfg)
    assert r.returncode == 2 and "at least 2 classes" in r.stderr, r.stdout + r.stderr


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """Phases 1 and 2 on the churn table (the baseline's best checkpoint is the model to predict with)."""
    import yaml

    from trainkit.testing import run_phase_inprocess

    root = tmp_path_factory.mktemp("table_run")
    churn_frame(600).to_csv(root / "churn.csv", index=False)
    cfg = _cfg(root / "churn.csv")
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(update={"epochs": 15}),
            "optimizer": cfg.optimizer.model_copy(update={"name": "adam", "lr": 3e-3}),
            "target": cfg.target.model_copy(update={"metric": "macro_f1"}),
        }
    )
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = root / "run"
    run_phase_inprocess("01_planning", run, config_path=str(root / "cfg.yaml"))
    run_phase_inprocess("02_baseline", run, attempt=1)
    return root, run, cfg


@pytest.mark.slow
def test_predict_from_raw_rows_matches_the_model_on_the_same_rows(table_run):
    import torch

    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model

    root, run, cfg = table_run
    bundle = load_run_data(cfg, run, "02_baseline")
    val = bundle.splits["val"]
    raw = pd.read_csv(root / "churn.csv").iloc[val].drop(columns=["churn"]).assign(unused="x")  # extra column: ignored
    raw.to_csv(root / "new.csv", index=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainkit.cli",
            "predict",
            str(run),
            str(root / "new.csv"),
            "-o",
            str(root / "pred.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and f"{len(val)} prediction(s)" in r.stdout, r.stdout + r.stderr
    pred = pd.read_csv(root / "pred.csv")
    assert list(pred.columns) == ["row", "prediction", "p(no)", "p(yes)"]
    state = load_checkpoint(run / "02_baseline/attempt-1/checkpoints/best.pt")
    model = build_model(cfg.model.name, bundle.input_shape, 2, cfg.model.kwargs, cfg.model.init)
    model.load_state_dict(state["model"])
    x, _ = bundle.arrays("val")
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), 1).numpy()
    assert np.allclose(pred[["p(no)", "p(yes)"]].to_numpy(), expected, atol=1e-5)
    assert pred["prediction"].tolist() == [["no", "yes"][i] for i in expected.argmax(1)]
    raw.drop(columns=["plan"]).to_csv(root / "missing.csv", index=False)
    bad = subprocess.run(
        [sys.executable, "-m", "trainkit.cli", "predict", str(run), str(root / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert bad.returncode == 2 and "'plan'" in bad.stderr, bad.stdout + bad.stderr


@pytest.mark.slow
def test_predict_says_which_values_training_never_saw_and_how_it_read_them(table_run):
    from trainkit.predict import predict

    root, run, _ = table_run
    rows = pd.read_csv(root / "churn.csv").head(12).drop(columns=["churn"])
    clean = predict(run, _written(rows, root / "clean.csv"))
    assert clean["notes"] == []  # rows like the training rows: nothing to say (gaps are gaps, not surprises)
    odd = rows.astype({"age": object, "signup": object})
    odd.loc[0, "age"], odd.loc[1, "age"], odd.loc[2, "age"] = "abc", "inf", 1e6
    odd.loc[3, "plan"], odd.loc[4, "plan"], odd.loc[5, "plan"] = "PRO", "Basic", "platinum"
    odd.loc[6, "signup"] = "someday"
    said: list[str] = []
    got = predict(run, _written(odd, root / "odd.csv"), say=said.append)
    by = {n.split(":")[0]: n for n in got["notes"]}
    assert set(by) == {"age", "plan", "signup"} and len(got["notes"]) == 4, got["notes"]
    age = [n for n in got["notes"] if n.startswith("age")]
    assert "2 row(s) not a finite number ('abc', 'inf'), predicted as if missing" in age[0]
    assert "1 row(s) outside the train range" in age[1] and "'1000000.0'" in age[1]
    assert "3 row(s) hold categories" in by["plan"] and "('PRO', 'Basic', 'platinum';" in by["plan"]
    assert "'Basic' ~ 'basic', 'PRO' ~ 'pro'" in by["plan"] and "platinum' ~" not in by["plan"]
    assert "1 row(s) not a date ('someday')" in by["signup"]
    assert all(f"trainkit: note: {n}" in said for n in got["notes"]) and len(got["predicted"]) == 12
    with pytest.raises(DataError, match="the rows to predict: table file not found"):
        predict(run, root / "nowhere.csv")


@pytest.mark.slow
def test_predict_never_writes_over_its_input_a_folder_or_the_runs_files(table_run):
    root, run, _ = table_run
    rows = _written(pd.read_csv(root / "churn.csv").head(5).drop(columns=["churn"]), root / "mine.csv")
    before = rows.read_bytes()
    gate = run / "01_planning" / "gate.json"
    gate_bytes = gate.read_bytes()
    for out, says in ((rows, "the input itself"), (root, "a folder"), (gate, "a file of the run")):
        r = trainkit_here("predict", run, rows, "-o", out)
        assert r.returncode == 2 and says in r.stderr, r.stdout + r.stderr
    assert rows.read_bytes() == before and gate.read_bytes() == gate_bytes  # nothing written was lost
    ok = trainkit_here("predict", run, rows, "-o", root / "out" / "preds.csv")  # a new folder is made
    assert ok.returncode == 0 and len(pd.read_csv(root / "out" / "preds.csv")) == 5, ok.stdout + ok.stderr


def _written(df: pd.DataFrame, path):
    df.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_phase1_shows_the_columns_and_the_class_balance(table_run):
    _, run, _ = table_run
    cols = json.loads((run / "01_planning" / "columns.json").read_text())
    by = {c["column"]: c for c in cols["columns"]}
    assert (
        by["plan"]["kind"] == "categorical"
        and 0 < by["age"]["missing"] < 0.2
        and by["customer_id"]["kind"] == "excluded"
    )
    assert by["plan"]["label_score"] > by["paperless"]["label_score"]  # plan drives churn in this table
    gate = json.loads((run / "01_planning" / "gate.json").read_text())
    assert "01_planning/preprocess.json" in gate["artifacts"]
    assert {c["id"]: c["status"] for c in gate["checks"]}["no_leaky_column"] == "pass"


@pytest.mark.slow
def test_the_baseline_is_selected_and_decided_on_the_target_metric(table_run):
    from trainkit.metrics import score

    _, run, cfg = table_run
    att = run / "02_baseline" / "attempt-1"
    rows = [json.loads(line) for line in (att / "metrics.jsonl").read_text().splitlines()]
    decision = json.loads((att / "decision.json").read_text())
    ev = decision["evidence"]
    assert ev["metric"] == "macro_f1" and ev["best_val_score"] == max(r["val_score"] for r in rows)
    assert "macro F1" in decision["reason"] and f"{ev['best_val_score']:.4f}" in decision["reason"]
    # the val_score is macro F1 of the model on val, not accuracy: recompute it from the best checkpoint
    import torch

    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model

    bundle = load_run_data(cfg, run, "02_baseline")
    model = build_model(cfg.model.name, bundle.input_shape, 2, cfg.model.kwargs, cfg.model.init)
    model.load_state_dict(load_checkpoint(att / "checkpoints" / "best.pt")["model"])
    x, y = bundle.arrays("val")
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x), 1).numpy()
    assert score("macro_f1", y.numpy(), probs) == pytest.approx(ev["best_val_score"], abs=1e-6)


def _probe(b):
    from trainkit.diagnostics.probes import data_probe

    return data_probe(b)


def test_equal_records_of_a_few_discrete_columns_are_chance_not_leaks(tmp_path):
    """Two passengers of the same age, sex and class are two people: reported, never a leak."""
    rng = np.random.default_rng(1)
    n = 900
    df = pd.DataFrame(
        {"age": rng.integers(1, 80, n), "sex": rng.choice(["f", "m"], n), "pclass": rng.integers(1, 4, n)}
    )
    df["survived"] = np.where((df.sex == "f") | (df.age < 12), "yes", "no")
    df.to_csv(tmp_path / "t.csv", index=False)
    b = load_data(tiny_config({"data.source": "csv", "data.root": str(tmp_path / "t.csv"), "data.label": "survived"}))
    assert b.source.duplicates_by_chance
    d = _probe(b)
    assert d["leaked_train_indices"] == [] and d["duplicate_train_indices"] == []
    assert d["shared_records_by_chance"]["train_rows_shared_across_splits"] > 0


def test_copied_records_of_a_continuous_table_are_leaks_and_a_shared_id_is_named(tmp_path):
    from trainkit.data.tables import id_overlap

    rng = np.random.default_rng(2)
    n = 800
    df = pd.DataFrame(
        {"patient": [f"P{i:04d}" for i in rng.integers(0, 700, n)], "x1": rng.normal(size=n), "x2": rng.normal(size=n)}
    )  # a patient may have several rows
    df["y"] = np.where(df.x1 + df.x2 > 0, "pos", "neg")
    df = pd.concat([df, df.iloc[:80]], ignore_index=True)  # 80 rows copied
    df.to_csv(tmp_path / "t.csv", index=False)
    b = load_data(tiny_config({"data.source": "csv", "data.root": str(tmp_path / "t.csv"), "data.label": "y"}))
    assert not b.source.duplicates_by_chance
    assert b.source.table.kinds == {"x1": "numeric", "x2": "numeric"}  # patient: an identifier, left out
    assert len(_probe(b)["leaked_train_indices"]) > 0
    assert id_overlap(b.source.table, b.splits)["patient"] == 0  # while the quarantine is closed no test ID is there
    from trainkit.data import Quarantine

    b = load_data(
        tiny_config({"data.source": "csv", "data.root": str(tmp_path / "t.csv"), "data.label": "y"}),
        quarantine=Quarantine(open=True, who="05_finalization"),
    )  # as Phase 5 loads it
    assert id_overlap(b.source.table, b.splits)["patient"] > 0  # the same patient on both sides of the split


def test_a_closed_quarantine_blanks_the_test_rows_of_the_raw_table(churn_csv):
    from trainkit.data import Quarantine

    closed = load_data(_cfg(churn_csv))
    frame, test, val = closed.source.table.frame, closed.splits["test"], closed.splits["val"]
    assert frame.iloc[test].isna().all().all()  # values and the label: nothing of a test row is in memory
    assert frame.iloc[val].notna().any(axis=1).all() and frame.iloc[val]["churn"].notna().all()
    kinds = {c: str(frame[c].dtype) for c in ("customer_id", "age", "paperless")}
    assert kinds == {"customer_id": "float64", "age": "float64", "paperless": "boolean"}, kinds  # blanks keep the kinds
    raw = pd.read_csv(churn_csv)
    assert frame.iloc[val]["plan"].fillna("-").tolist() == raw.iloc[val]["plan"].fillna("-").tolist()
    opened = load_data(_cfg(churn_csv), quarantine=Quarantine(open=True, who="05_finalization"))
    assert opened.source.table.frame.iloc[test]["churn"].tolist() == raw.iloc[test]["churn"].tolist()
    assert np.array_equal(closed.arrays("train")[0].numpy(), opened.arrays("train")[0].numpy())  # same encoding


@pytest.mark.slow
def test_the_readmes_own_table_walkthrough_as_written(tmp_path):
    """README "Your own table": the config and the three commands, on a generated churn table."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own table")[1].split("\n## ")[0]
    (tmp_path / "churn.yaml").write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    commands = [
        line.split("#")[0].strip() for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    ]
    (tmp_path / "data").mkdir()
    df = churn_frame(600)
    df.to_csv(tmp_path / "data" / "churn.csv", index=False)
    df.drop(columns=["churn"]).head(25).to_csv(tmp_path / "data" / "new_customers.csv", index=False)
    results = [
        subprocess.run(shlex.split(c), cwd=tmp_path, capture_output=True, text=True, timeout=1800) for c in commands
    ]
    validate, run, pred = results
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert run.returncode in (0, 3), run.stdout[-3000:] + run.stderr[-3000:]  # ready, or waiting for the stakeholder
    assert pred.returncode == 0 and "the final model" in pred.stderr, pred.stdout + pred.stderr
    out = pd.read_csv(tmp_path / "predictions.csv")
    assert len(out) == 25 and set(out["prediction"]) <= {"no", "yes"}
    assert np.allclose(out[["p(no)", "p(yes)"]].sum(axis=1), 1.0, atol=1e-5)
    gate = json.loads((tmp_path / "runs" / "churn" / "05_finalization" / "gate.json").read_text())
    status = {c["id"]: c["status"] for c in gate["checks"]}
    assert status["test_disjoint"] == "pass" and status["test_meets_target"] == "pass", gate["checks"]
    assert status["raw_rows_predict"] == "pass", gate[
        "checks"
    ]  # raw test rows through `trainkit predict`, as evaluated
    # the deployment guide predicts from raw rows with onnxruntime, numpy and preprocess.json alone
    final = tmp_path / "runs" / "churn" / "05_finalization"
    assert status["deployment_guide"] == "pass", gate["checks"]
    guide = (final / "deployment_guide.md").read_text()
    code = re.findall(r"```python\n(.*?)```", guide.split("## From raw rows")[1], re.S)[0]
    blocked = (
        "import sys\nfor m in ('trainkit', 'pandas', 'torch'):\n    sys.modules[m] = None\n"  # importing them fails
    )
    ran = subprocess.run([sys.executable, "-c", blocked + code], cwd=final, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and "raw-row predictions: [" in ran.stdout, ran.stdout + ran.stderr
    pre = json.loads((final / "preprocess.json").read_text())
    num = next(c for c in pre["columns"] if c["kind"] == "numeric")
    num["mean"] += 3 * num["std"]  # a preprocessing that drifted from the model's: the snippet must say so
    (final / "preprocess.json").write_text(json.dumps(pre))
    ran = subprocess.run([sys.executable, "-c", blocked + code], cwd=final, capture_output=True, text=True, timeout=300)
    assert ran.returncode != 0 and "differ from trainkit's" in ran.stderr, ran.stdout + ran.stderr


@pytest.mark.slow
def test_the_production_check_sends_raw_test_rows_through_predict_and_fails_on_a_mismatch(table_run):
    import torch

    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model
    from trainkit.predict import raw_rows_parity

    root, run, cfg = table_run
    bundle = load_run_data(cfg, run, "02_baseline")
    state = load_checkpoint(run / "02_baseline/attempt-1/checkpoints/best.pt")  # the model predict uses (no final yet)
    model = build_model(cfg.model.name, bundle.input_shape, 2, cfg.model.kwargs, cfg.model.init)
    model.load_state_dict(state["model"])
    t = bundle.source.table  # what an evaluation would record: the model on the test rows, encoded in memory
    x = torch.as_tensor(t.preprocess.transform(t.frame.iloc[bundle.splits["test"]]))
    with torch.no_grad():  # (bundle._x hides the test rows while the quarantine is closed, as in Phase 2)
        expected = model.eval()((x - bundle.mean) / bundle.std).argmax(1).tolist()
    status, why = raw_rows_parity(run, bundle, expected)
    assert status == "pass" and f"{len(expected)} raw test rows" in why, why
    flipped = list(expected)
    flipped[3] = 1 - flipped[3]
    status, why = raw_rows_parity(run, bundle, flipped)
    assert status == "fail" and "1 of" in why, why
    assert raw_rows_parity(run, bundle, None)[0] == "fail"
    digits = load_data(tiny_config())
    assert raw_rows_parity(run, digits, expected)[0] == "na"


def test_the_reference_models_are_fitted_on_the_same_rows_and_scored_on_val(churn_csv):
    from trainkit.diagnostics.probes import reference_probe
    from trainkit.plots import reference_figure

    b = load_data(_cfg(churn_csv))
    ref = reference_probe(b, network_val=0.80)
    assert set(ref["models"]) == {"logistic_regression", "boosted_trees"} and ref["rows"] == len(b.splits["train"])
    trees = ref["models"]["boosted_trees"]["val_accuracy"]
    assert trees > 0.9  # the rule (plan, age) is a pair of splits for trees
    assert ref["best_val_accuracy"] == max(m["val_accuracy"] for m in ref["models"].values())
    assert ref["gap_points"] == pytest.approx(100 * (ref["best_val_accuracy"] - 0.80), abs=0.01)
    assert len(reference_figure(ref).axes[0].patches) == 3
    small = reference_probe(b, None, max_rows=100)
    assert small["rows"] == 100 and small["gap_points"] is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "image_folder"])
def test_predict_takes_an_npz_or_an_image_folder_for_those_runs(tmp_path, kind):
    """The other sources: predictions on the data's own files equal the model on the rows the run
    evaluates (same reading, same normalization)."""
    import torch
    import yaml

    from trainkit.checkpoints import load_checkpoint
    from trainkit.models import build_model
    from trainkit.predict import predict
    from trainkit.testing import make_image_folder, make_npz, run_phase_inprocess

    if kind == "npz":
        source = make_npz(tmp_path / "d.npz", n=300)
        data = {"data.source": "npz", "data.root": str(source)}
    else:
        source = make_image_folder(tmp_path / "imgs", per_class=30)
        data = {"data.source": "image_folder", "data.root": str(source)}
    cfg = tiny_config({**data, "training.epochs": 5})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    run = tmp_path / "run"
    run_phase_inprocess("01_planning", run, config_path=str(tmp_path / "cfg.yaml"))
    run_phase_inprocess("02_baseline", run, attempt=1)
    result = predict(run, source)
    bundle = load_run_data(cfg, run, "02_baseline")
    state = load_checkpoint(run / "02_baseline/attempt-1/checkpoints/best.pt")
    model = build_model(cfg.model.name, bundle.input_shape, bundle.num_classes, cfg.model.kwargs, cfg.model.init)
    model.load_state_dict(state["model"])
    x, _ = bundle.arrays("val")
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), 1).numpy()
    assert np.allclose(result["probabilities"][bundle.splits["val"]], expected, atol=1e-5)
    if kind == "image_folder":
        assert result["ids"]["file"][0] == "class_0/img_0.png" and len(result["ids"]["file"]) == 90


def test_a_column_that_gives_the_label_away_is_named_a_possible_leak(churn_csv):
    df = pd.read_csv(churn_csv)
    rng = np.random.default_rng(3)
    df["refund_issued"] = np.where(df["churn"] == "yes", "Y", "N")  # recorded after the customer left
    df["noise"] = rng.normal(size=len(df))
    df["refund_amount"] = np.where(df["churn"] == "yes", 50.0, 0.0) + rng.normal(0, 1, len(df))  # a continuous one
    df.to_csv(churn_csv, index=False)
    b = load_data(_cfg(churn_csv))  # the quarantine closed, as in Phases 1-4: the test rows are blank
    rows = {
        r["column"]: r
        for r in b.source.table.overview_of(
            b.splits["train"], b.split_labels("train").numpy(), b.splits["val"], b.split_labels("val").numpy()
        )
    }
    assert rows["refund_issued"]["possible_leak"] and rows["refund_issued"]["label_score"] == 1.0
    assert rows["refund_amount"]["possible_leak"] and rows["refund_amount"]["label_score"] >= 0.99
    assert not rows["noise"]["possible_leak"] and not rows["plan"]["possible_leak"]
    assert rows["noise"]["label_score"] < 0.85


def test_table_problems_are_named_by_column_and_a_clean_table_has_none(tmp_path, churn_csv):
    from trainkit.config import config_to_dict
    from trainkit.diagnostics.data_quality import detect_data_quality

    rng = np.random.default_rng(0)
    n = 800
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "region": rng.choice(list("abcdefghij"), n)})
    df["y"] = np.where(df.x1 + 0.3 * rng.normal(size=n) > 0, "pos", "neg")
    df["status"] = np.where(df.y == "pos", "closed", "open")  # known only after the outcome: a leak
    df["const"] = "same"
    df.loc[df.index % 7 == 0, "region"] = [f"new{i}" for i in range(len(df.loc[df.index % 7 == 0]))]
    df.to_csv(tmp_path / "t.csv", index=False)

    def judged(path, label):
        cfg = tiny_config({"data.source": "csv", "data.root": str(path), "data.label": label})
        b = load_data(cfg)
        ev = {
            "probes": {"data": _probe(b)},
            "config": config_to_dict(cfg),
            "val_size": len(b.splits["val"]),
            "target": 0.99,
            "best": {"val_accuracy": 0.9},
        }
        return _probe(b)["table"], detect_data_quality(ev)

    table, f = judged(tmp_path / "t.csv", "y")
    assert table["leaky_columns"] == ["status"] and table["constant_columns"] == ["const"]
    assert set(table["unseen_categories"]) == {"region"} and table["unseen_categories"]["region"]["fraction"] > 0.05
    assert {"leaky_column", "unseen_categories"} <= set(f.evidence["problems"]) and f.evidence["leaky_columns"] == [
        "status"
    ]
    advice = {r.id: r for r in f.recommendations}
    assert (
        advice["drop_leaky_columns"].kind == "advice"
        and "data.drop: ['status']" in advice["drop_leaky_columns"].rationale
    )
    clean_table, clean = judged(churn_csv, "churn")
    assert clean_table["leaky_columns"] == [] and not {"leaky_column", "unseen_categories"} & set(
        clean.evidence["problems"]
    )


def test_a_numeric_measurement_is_never_an_id_and_an_integer_run_is():
    from trainkit.data.tables import _numeric_id

    rng = np.random.default_rng(0)
    n = 1470
    daily_rate = pd.Series(rng.integers(102, 1500, n))  # HR attrition's DailyRate: 886 values over 1,470 rows
    assert daily_rate.nunique() > 0.5 * n and not _numeric_id(daily_rate, n)
    assert not _numeric_id(pd.Series(rng.normal(70, 20, n).round(1)), n)  # a float with repeats
    assert not _numeric_id(pd.Series(np.r_[np.arange(n - 40), np.arange(40)] + 0.0), n)  # float-typed, values repeat
    assert _numeric_id(pd.Series(np.arange(n) + 1000), n)  # an employee number
    assert _numeric_id(pd.Series(rng.permutation(n) + 1.0), n)  # one per row, float-typed (a column with gaps read so)


def test_one_chance_duplicate_is_reported_and_a_copied_table_still_blocks():
    from trainkit.data.tables import shared_records_verdict

    rng = np.random.default_rng(1)
    n = 1461
    df = pd.DataFrame(
        {
            "precipitation": rng.exponential(2, n).round(1),
            "temp_max": rng.normal(16, 7, n).round(1),
            "temp_min": rng.normal(8, 5, n).round(1),
            "wind": rng.gamma(3, 1, n).round(1),
        }
    )
    ok, why = shared_records_verdict(df, list(df.columns), 1, 219, 1242)  # Seattle weather: 1 of 219 test rows
    assert ok and "1 of 219 records" in why and "not a leak" in why and "predict" in why
    ok, why = shared_records_verdict(df, list(df.columns), 40, 219, 1242)  # rows exported twice, then split
    assert not ok and "a leak" in why
    assert shared_records_verdict(df, list(df.columns), 0, 219, 1242)[0]
    # columns whose chance matches are many (a house's rounded area, rooms, city, garden): as many as chance predicts
    # are chance, whatever share of the rows they are; several times that are copies
    from trainkit.data.tables import chance_matches
    from trainkit.testing import price_table

    houses = price_table(3000, seed=2).drop(columns=["price"])
    expected = chance_matches(houses, list(houses.columns), 450, 2550)
    assert expected > 10
    assert shared_records_verdict(houses, list(houses.columns), int(expected), 450, 2550)[0]
    assert not shared_records_verdict(houses, list(houses.columns), int(3 * expected), 450, 2550)[0]


def test_the_production_gate_reports_a_chance_duplicate_instead_of_blocking(tmp_path):
    from trainkit.data import Quarantine
    from trainkit.phases.final_checks import _disjoint

    rng = np.random.default_rng(3)
    n = 1500
    df = pd.DataFrame({"a": rng.normal(size=n).round(2), "b": rng.normal(size=n).round(2)})
    df["y"] = np.where(df.a > 0, "up", "down")
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg = tiny_config({"data.source": "csv", "data.root": str(tmp_path / "t.csv"), "data.label": "y"})
    b = load_data(cfg, quarantine=Quarantine(open=True, who="05_finalization"))
    pool = len(b.splits["train"]) + len(b.splits["val"])
    state, why = _disjoint(b, 1, pool)
    assert state == "warn" and "1 of" in why and "not a leak" in why
    state, why = _disjoint(b, 60, pool)
    assert state == "fail" and "a leak" in why


def test_the_shared_record_count_is_of_test_records_however_often_train_repeats_one(tmp_path):
    """One test record whose content 39 train rows repeat is one shared record (a handful,
    reported), not 39 (a leak): the production gate counts test records, as its evidence says."""
    from types import SimpleNamespace

    from trainkit.data import Quarantine
    from trainkit.phases.final_checks import _quarantine_checks

    rng = np.random.default_rng(4)
    n = 1500
    df = pd.DataFrame({"a": rng.normal(size=n).round(4), "b": rng.normal(size=n).round(4)})
    df.loc[:39, ["a", "b"]] = [0.1234, -0.5678]  # rows 0-39: one record, forty times
    df["y"] = np.where(df.a > 0, "up", "down")
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg = tiny_config({"data.source": "csv", "data.root": str(tmp_path / "t.csv"), "data.label": "y"})
    b = load_data(cfg, quarantine=Quarantine(open=True, who="05_finalization"))
    rest = [i for i in range(40, n)]
    b.splits = {"train": np.array(list(range(1, 40)) + rest[:1000]), "val": np.array(rest[1000:1200])}
    b.splits["test"] = np.array([0] + rest[1200:])
    state, why = _quarantine_checks(SimpleNamespace(run_dir=tmp_path), b)["test_disjoint"]
    assert state == "warn" and why.startswith(f"train/val and test: 1 of {len(b.splits['test'])} records"), why


def test_a_failed_per_class_floor_shows_what_the_references_recall_of_those_classes():
    from trainkit.phases.peers import floor_evidence, recall_table

    rec = {
        "accuracy": 0.93,
        "per_class": [
            {"class": "sun", "recall": 0.97},
            {"class": "snow", "recall": 0.20},
            {"class": "fog", "recall": 0.30},
        ],
        "reference_recall": {
            "logistic_regression": {"accuracy": 0.90, "recall": [0.98, 0.0, 0.10]},
            "boosted_trees": {"accuracy": 0.92, "recall": [0.96, 0.15, 0.25]},
        },
    }
    low = rec["per_class"][1:]
    why = floor_evidence(rec, low)
    assert "snow: network 0.200, best reference 0.150 (boosted trees)" in why
    assert "fog: network 0.300, best reference 0.250" in why and "no reference does better" in why
    rec["reference_recall"]["boosted_trees"]["recall"][1] = 0.60  # a model that does better on snow: no reassurance
    assert "no reference does better" not in floor_evidence(rec, low)
    rows = recall_table(rec)
    assert "| snow | 0.200 | 0.000 | 0.600 |" in rows and rows[-1] == "| (accuracy) | 0.930 | 0.900 | 0.920 |"
    assert (
        floor_evidence({**rec, "reference_recall": {}}, low) == ""
        and recall_table({**rec, "reference_recall": {}}) == []
    )


def test_class_names_from_the_data_are_text_in_the_markdown_reports_not_markup():
    """A label value is data: in a Markdown table it cannot add a column (``|``), open a section (a
    line break) or run as HTML in a viewer that renders it."""
    from trainkit._io import md_text
    from trainkit.phases.peers import recall_table

    assert md_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert md_text("a|b\n## c") == "a\\|b ## c" and md_text("R&D") == "R&amp;D" and md_text(7) == "7"
    rec = {
        "accuracy": 0.9,
        "per_class": [{"class": "<b>x</b>|y", "recall": 0.8}, {"class": "ok", "recall": 1.0}],
        "reference_recall": {"boosted_trees": {"accuracy": 0.9, "recall": [0.7, 1.0]}},
    }
    assert "| &lt;b&gt;x&lt;/b&gt;\\|y | 0.800 | 0.700 |" in recall_table(rec)


def _test_record(per_class, **over):
    """A classifier's test_evaluation.json, as much of it as the production gate's metric checks read."""
    return {
        "metric": "accuracy",
        "accuracy": 0.96,
        "val_accuracy": 0.96,
        "accuracy_ci": [0.80, 0.98],
        "val_accuracy_ci": [0.80, 0.98],
        "robustness_drop": 0.0,
        "ece": 0.02,
        "per_class": per_class,
        **over,
    }


def test_a_missed_target_shows_what_the_references_score_on_the_same_test_rows():
    """The production gate's target check: beside the network's test value, each reference's on the
    same test rows, and whether any of them reaches the target (the check still fails)."""
    from trainkit.phases.final_numbers import metric_checks
    from trainkit.testing import tiny_config

    rec = _test_record(
        [{"class": "good", "recall": 0.97}, {"class": "bad", "recall": 0.55}],
        accuracy=0.83,
        val_accuracy=0.835,
        reference_recall={
            "logistic_regression": {"accuracy": 0.832, "recall": [0.98, 0.40]},
            "boosted_trees": {"accuracy": 0.818, "recall": [0.96, 0.45]},
        },
    )
    cfg = tiny_config({"target.value": 0.95})
    status, why = metric_checks(cfg, rec)["test_meets_target"]
    assert status == "fail" and "logistic regression 0.8320, boosted trees 0.8180" in why
    assert "no reference reaches it either" in why
    rec["reference_recall"]["boosted_trees"]["accuracy"] = 0.96
    status, why = metric_checks(cfg, rec)["test_meets_target"]
    assert status == "fail" and "the boosted trees reaches it: the network's family falls short" in why
    cfg = tiny_config({"target.value": 0.95, "target.metric": "balanced_accuracy"})
    rec.update(score=0.76, val_score=0.76, score_ci=[0.7, 0.8], val_score_ci=[0.7, 0.8], metric="balanced_accuracy")
    status, why = metric_checks(cfg, rec)["test_meets_target"]
    assert status == "fail" and "logistic regression 0.6900" in why  # the mean of its class recalls
    rec.update(accuracy=0.99, metric="accuracy")  # met: the check passes and says nothing of the references
    status, why = metric_checks(tiny_config({"target.value": 0.95}), rec)["test_meets_target"]
    assert status == "pass" and "references" not in why
    from trainkit.phases.peers import target_evidence

    reg = {"regression": True, "reference_test": {"ridge": {"rmse": 3.1, "r2": 0.5}, "boosted_trees": {"rmse": 2.2}}}
    assert "the boosted trees reaches it" in target_evidence(reg, "rmse", 2.5)  # an error: lower is better
    assert "no reference reaches it either" in target_evidence(reg, "rmse", 2.0)


def test_a_class_with_no_test_rows_is_named_not_failed_by_the_per_class_floor():
    """A class of one row lands in train: the test split has none of it, scikit-learn reports its
    recall as 0, and the floor would block a gate on a class nothing measured."""
    from trainkit.phases.final_numbers import metric_checks
    from trainkit.testing import tiny_config

    rec = _test_record(
        [
            {"class": "no", "recall": 0.97, "support": 80},
            {"class": "yes", "recall": 0.90, "support": 40},
            {"class": "maybe", "recall": 0.0, "support": 0},
        ]
    )
    status, why = metric_checks(tiny_config({"target.value": 0.95}), rec)["per_class_reported"]
    assert status == "pass" and "lowest recall 0.900" in why and "no test rows: ['maybe']" in why
    rec["per_class"][1].update(recall=0.30)  # a measured class below the floor still fails
    status, why = metric_checks(tiny_config({"target.value": 0.95}), rec)["per_class_reported"]
    assert status == "fail" and "['yes']" in why and "no test rows: ['maybe']" in why
