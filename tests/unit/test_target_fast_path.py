"""The strict check's fast path (one regex for plain host:port) agrees with the full check."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sdbridge.model import ADDRESS_LABEL, address_problem, target_problem

# Characters that make addresses interesting: digits, dots and colons (IPv4 vs names,
# ports), name characters, and ones the strict check refuses.
_CHARS = st.sampled_from(list("0123456789.:-_aZ[]/@ \n%"))
_NUMERIC = st.sampled_from(list("0125689.:"))


@settings(max_examples=3000)
@given(st.one_of(st.text(_CHARS, max_size=14), st.text(_NUMERIC, max_size=20)))
def test_strict_target_check_accepts_exactly_what_address_problem_accepts(address: str) -> None:
    labels = {ADDRESS_LABEL: address, "job_label": "x"}
    problem = target_problem(labels, strict=True)
    if not address:
        assert problem is not None
    else:
        assert (problem is None) == (address_problem(address) is None)


def test_reserved_labels_still_checked_when_the_address_is_plain() -> None:
    assert target_problem({ADDRESS_LABEL: "a:1", "__scheme__": "ftp"}, strict=True)
    assert target_problem({ADDRESS_LABEL: "a:1", "__param_": "x"}, strict=True)
    assert target_problem({ADDRESS_LABEL: "a:1", "__scrape_interval__": "0.5s"}, strict=True)
    assert target_problem({ADDRESS_LABEL: "1.2.3.4:65535"}, strict=True) is None
    assert target_problem({ADDRESS_LABEL: "256.2.3.4:80"}, strict=True)
    assert target_problem({ADDRESS_LABEL: "a:65536"}, strict=True)
    assert target_problem({ADDRESS_LABEL: "a:0080"}, strict=True) is None  # the full check
