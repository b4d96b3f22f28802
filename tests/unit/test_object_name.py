"""Object names (cn) are checked before anything is recorded: what the directory's rules could
not later let the admin group delete is refused up front."""

from __future__ import annotations

import pytest

from adba.directory.objects import check_name
from adba.errors import InvalidInput


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a\x00b", "a\x7fb", " lead", "trail ", "why?", "100%", "%41"]
)
def test_refused_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


@pytest.mark.parametrize("name", ["Lab CSVLK 1", "x" * 64, "a,b+c=d#e", "Ünïcode"])
def test_accepted_names(name: str) -> None:
    assert check_name(name) == name
