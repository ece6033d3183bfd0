import numpy as np
import pytest

from ctrkit.errors import StoreError
from ctrkit.schema import Field, Schema


def make_schema() -> Schema:
    return Schema(
        (
            Field("user", "sparse", vocab_size=10),
            Field("item", "sparse", vocab_size=7),
            Field("price", "dense"),
            Field("history", "sequence", max_len=5, shares="item"),
        )
    )


def test_views_and_offsets():
    schema = make_schema()
    assert [f.name for f in schema.sparse] == ["user", "item"]
    assert [f.name for f in schema.dense] == ["price"]
    assert [f.name for f in schema.sequence] == ["history"]
    assert schema.vocab_sizes == [10, 7]
    np.testing.assert_array_equal(schema.sparse_offsets, [0, 10])
    assert schema.total_vocab == 17
    assert schema.sparse_index("item") == 1


def test_json_round_trip_drops_irrelevant_attributes():
    schema = make_schema()
    again = Schema.from_json(schema.to_json())
    assert again == schema
    dense = [f for f in schema.to_dict()["fields"] if f["kind"] == "dense"][0]
    assert dense == {"name": "price", "kind": "dense"}


@pytest.mark.parametrize(
    "fields, message",
    [
        ((Field("a", "sparse", vocab_size=3), Field("a", "dense")), "duplicate"),
        ((Field("s", "sequence", max_len=3, shares="nope"),), "not a sparse field"),
    ],
)
def test_invalid_schemas(fields, message):
    with pytest.raises(ValueError, match=message):
        Schema(fields)


def test_invalid_fields():
    with pytest.raises(ValueError, match="vocab_size"):
        Field("a", "sparse", vocab_size=0)
    with pytest.raises(ValueError, match="kind"):
        Field("a", "image")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="invalid schema"):
        Schema.from_dict({"fields": [{"name": "a", "kind": "sparse"}]})
