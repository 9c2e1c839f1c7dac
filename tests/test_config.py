import pytest
import yaml

from trainkit.config import config_hash, load_config, save_config, template_path
from trainkit.errors import ConfigError
from conftest import trainkit_here  # noqa: E402 (the tests folder is on sys.path)


def write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_template_is_the_seed_baseline():
    cfg = load_config(None)
    assert template_path().name == "baseline_template.yaml"
    assert cfg.optimizer.lr == 1e-3 and cfg.training.epochs == 20 and cfg.data.source == "digits"


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"optimizer": {"lr": 0.1, "learning_rate": 0.1}}))
    ((path, msg),) = e.value.problems
    assert path == "optimizer.learning_rate"
    assert "unknown key 'learning_rate'" in msg and "lr" in msg and "weight_decay" in msg


def test_all_problems_reported_at_once_with_dotted_paths(tmp_path):
    bad = {"optimizer": {"lr": "fast", "name": "rmsprop"}, "training": {"epochs": 0}, "bogus": {}}
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, bad))
    paths = {p for p, _ in e.value.problems}
    assert {"optimizer.lr", "optimizer.name", "training.epochs", "bogus"} <= paths
    assert "optimizer.lr" in str(e.value) and "4 problem" in str(e.value)


def test_overrides_are_type_checked_and_applied(tmp_path):
    cfg = load_config(None, ["optimizer.lr=3e-4", "training.epochs=7", "model.kwargs={hidden: [8, 8]}"], target=0.5)
    assert cfg.optimizer.lr == 3e-4 and cfg.training.epochs == 7 and cfg.model.kwargs == {"hidden": [8, 8]}
    assert cfg.target.value == 0.5
    with pytest.raises(ConfigError) as e:
        load_config(None, ["training.epochs=many"])
    assert e.value.problems[0][0] == "training.epochs"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optimizer.lrr=1"])
    assert "unknown key 'lrr'" in str(e.value)
    with pytest.raises(ConfigError):
        load_config(None, ["novalue"])


def test_fraction_cross_check(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"data": {"val_fraction": 0.5, "test_fraction": 0.45}}))
    assert "data" in e.value.problems[0][0]


def test_save_roundtrip_and_hash(tmp_path):
    cfg = load_config(None, ["optimizer.lr=0.01"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None)) != config_hash(cfg)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    for text in ("", "# nothing yet\n", "{}\n"):  # an empty file must not train the built-in digits silently
        p.write_text(text)
        with pytest.raises(ConfigError, match="holds no settings; write at least a data: section"):
            load_config(p)
    assert load_config(p, overrides=["training.epochs=3"]).training.epochs == 3  # settings given on the command line


@pytest.mark.slow
def test_cli_config_validate_exit_codes(tmp_path):
    good = trainkit_here("config", "validate", template_path())
    assert good.returncode == 0, good.stderr
    bad = trainkit_here("config", "validate", write(tmp_path, {"training": {"epochs": -1, "colour": 1}}))
    assert bad.returncode == 2
    assert "training.epochs" in bad.stderr and "training.colour" in bad.stderr
