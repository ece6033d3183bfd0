"""Dataset specs: strict validation, one-line errors naming the spec file and the key."""

from __future__ import annotations

import pytest
import yaml

from ctrkit.data.spec import builtin_specs, load_spec, spec_from_dict, with_overrides
from ctrkit.errors import ConfigError

BASE = {
    "name": "clicks",
    "label": "click",
    "reader": {"columns": ["click", "user", "item", "hist"]},
    "features": [{"name": "user"}, {"name": "item", "tokens": "int"},
                 {"name": "hist", "type": "sequence", "max_len": 3, "shares": "item"}],
}


def spec_with(**changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data.update(changes)
    return data


def error_of(data, tmp_path) -> str:
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_builtin_specs_load():
    assert {"avazu", "criteo", "movielens", "taobao-joined"} <= set(builtin_specs())
    for name in builtin_specs():
        spec = load_spec(name)
        assert spec.name == name and spec.features


def test_base_spec_is_valid():
    spec = spec_from_dict(spec_with())
    assert [f.output for f in spec.features] == ["sparse", "sparse", "sequence"]


@pytest.mark.parametrize("data, expected", [
    (spec_with(labels="click"), "labels: unknown key (did you mean 'label'?)"),
    (spec_with(features=[{"name": "user", "min_cont": 2}]), "features[0] (user).min_cont: unknown key (did you mean 'min_count'?)"),
    (spec_with(reader={"columns": ["click", "user"], "delimter": ","}), "reader.delimter: unknown key"),
    (spec_with(split={"by": "random", "ratio": [8, 1, 1]}), "split.ratio: unknown key"),
])
def test_unknown_keys(tmp_path, data, expected):
    assert expected in error_of(data, tmp_path)


@pytest.mark.parametrize("data, expected", [
    (spec_with(features=[{"name": "user", "min_count": "2"}]), "features[0] (user).min_count: must be an integer, got '2'"),
    (spec_with(features=[{"name": "user", "type": "categorial"}]), "must be one of categorical, numeric, derived, sequence, vocabulary, got 'categorial' (did you mean 'categorical'?)"),
    (spec_with(features=[{"name": 3}]), "features[0].name: must be a non-empty string, got 3"),
    (spec_with(reader={"header": "yes"}), "reader.header: must be true or false, got 'yes'"),
    (spec_with(features="user"), "features: must be a non-empty list"),
    (spec_with(split={"by": "random", "ratios": [8, 1]}), "split.ratios: must be three ratios"),
    (spec_with(features=[{"name": "age", "type": "numeric", "transform": "bucketize", "boundaries": [3, 2]}]), "must be strictly increasing"),
    (spec_with(features=[{"name": "h", "type": "sequence", "max_len": 0, "shares": "x"}]), "features[0] (h).max_len: must be >= 1, got 0"),
])
def test_wrong_types(tmp_path, data, expected):
    assert expected in error_of(data, tmp_path)


def test_missing_and_duplicate_columns(tmp_path):
    missing = spec_with(features=[{"name": "user"}, {"name": "price", "type": "numeric", "transform": "log1p"}])
    assert "reader.columns: has no column 'price', which the spec uses" in error_of(missing, tmp_path)
    duplicate = spec_with(reader={"columns": ["click", "user", "user"]})
    assert "reader.columns: duplicate column 'user'" in error_of(duplicate, tmp_path)
    twice = spec_with(features=[{"name": "user"}, {"name": "user", "tokens": "int"}])
    assert "features: duplicate feature name 'user'" in error_of(twice, tmp_path)
    no_label = spec_with(label="clicked")
    assert "has no column 'clicked'" in error_of(no_label, tmp_path)
    sequence_columns = spec_with(features=[{"name": "item"}, {"name": "h", "type": "sequence", "max_len": 2, "shares": "item", "columns": ["h1", "h2"]}])
    assert "has no column 'h1'" in error_of(sequence_columns, tmp_path)


def test_bad_shares(tmp_path):
    data = spec_with(features=[{"name": "user"}, {"name": "item"}, {"name": "hist", "type": "sequence", "max_len": 3, "shares": "itme"}])
    assert "features (hist).shares: 'itme' is not a categorical feature of this spec (did you mean 'item'?)" in error_of(data, tmp_path)
    dense = spec_with(features=[{"name": "item", "type": "numeric", "transform": "log1p"},
                                {"name": "hist", "type": "sequence", "max_len": 3, "shares": "item"}])
    assert "'item' is not a categorical feature" in error_of(dense, tmp_path)
    missing = spec_with(features=[{"name": "item"}, {"name": "hist", "type": "sequence", "max_len": 3}])
    assert "features[1] (hist).shares: is required for a sequence feature" in error_of(missing, tmp_path)


def test_vocabulary_feature_reads_no_column():
    spec = spec_from_dict(spec_with(features=[{"name": "genre", "type": "vocabulary"},
                                              {"name": "hist", "type": "sequence", "max_len": 3, "shares": "genre"}]))
    assert spec.feature("genre").raw_columns == () and spec.feature("genre").output == "sparse"
    with pytest.raises(ConfigError, match="source: unknown key"):
        spec_from_dict(spec_with(features=[{"name": "genre", "type": "vocabulary", "source": "user"}]))


def test_overrides():
    spec = load_spec("avazu")
    changed = with_overrides(spec, min_count=5, ratios=(1, 0, 0), seed=7)
    assert {f.min_count for f in changed.features} == {5} and changed.split.ratios == (1.0, 0.0, 0.0) and changed.split.seed == 7
    with pytest.raises(ConfigError, match="--min-count must be >= 1"):
        with_overrides(spec, min_count=0)


def test_spec_round_trips_through_its_record():
    for name in builtin_specs():
        spec = load_spec(name)
        again = spec_from_dict(spec.to_dict(), origin="record")
        assert again.features == spec.features and again.label == spec.label and again.split == spec.split


def test_group_names_a_categorical_feature(tmp_path):
    assert spec_from_dict(spec_with(group="user")).group == "user"
    assert "group: 'hist' is not a categorical feature" in error_of(spec_with(group="hist"), tmp_path)
    assert "group: must be a string" in error_of(spec_with(group=3), tmp_path)
