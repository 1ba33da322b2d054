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


def test_a_path_that_is_not_a_spec_says_whether_it_exists(tmp_path):
    with pytest.raises(SpecError, match=r"/no/such/cache: no such file or folder") as info:
        parse_spec("/no/such/cache")
    assert "kind must be" not in str(info.value)
    with pytest.raises(SpecError, match="no such file or folder"):
        parse_spec("./cache-64")
    with pytest.raises(SpecError, match=r"not a prepared medsyn cache \(no meta.json\).*folder:"):
        parse_spec(str(tmp_path))
