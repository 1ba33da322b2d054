import pytest

from medsyn.data.spec import DatasetSpec, parse_spec
from medsyn.errors import SpecError


def test_parse_kind_location_options():
    s = parse_spec("chexpert:/data/CheXpert-v1.0?uncertain=ones&view=all")
    assert s == DatasetSpec("chexpert", "/data/CheXpert-v1.0", {"uncertain": "ones", "view": "all"})
    assert parse_spec(str(s)) == s


def test_phantom_needs_no_location_and_yaml_mapping_is_equivalent():
    assert parse_spec("phantom?n=10") == DatasetSpec("phantom", "", {"n": "10"})
    assert parse_spec({"kind": "nih", "location": "/x", "options": {"channels": 1}}) == parse_spec("nih:/x?channels=1")


@pytest.mark.parametrize("bad", ["", "bogus:/x", "nih", "nih:/x?a=1&&b"])
def test_bad_specs_raise_spec_error(bad):
    with pytest.raises(SpecError):
        parse_spec(bad)
