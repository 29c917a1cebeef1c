import pytest

from un2clip.registry import Registry


def test_registry_refuses_duplicates_and_names_the_known():
    r: Registry[int] = Registry("widget")
    assert r.add("a", 1) == 1
    r.register("b")(2)
    assert list(r) == ["a", "b"] and r.lookup("b") == 2
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        r.add("a", 3)
    with pytest.raises(ValueError, match="unknown widget 'c'; known: a, b"):
        r.lookup("c")
    assert r["a"] == 1  # still a dict where code reads it as one
