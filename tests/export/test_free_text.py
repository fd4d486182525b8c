"""Series descriptions lose the patient's name parts and ID, however the name is written."""

from __future__ import annotations

import pydicom
import pytest

from cohort.export.crawl import _free_text


def header(name: str, description: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientID, ds.SeriesDescription = name, "PID-9", description
    return ds


@pytest.mark.parametrize(("name", "description", "leaked"), [
    # Japanese exports: alphabetic, ideographic and phonetic groups joined by "="
    ("YAMADA^TAROU=山田^太郎=やまだ^たろう", "CT TAROU YAMADA 山田 太郎", ("TAROU", "山田", "太郎")),
    ("O'Brien^Mary-Ann", "CT Mary O'Brien Ann", ("Mary", "Brien", "Ann")),
    ("SMITH^JOHN.", "CT John Smith", ("John",)),
])
def test_every_name_part_is_starred_out(name: str, description: str, leaked: tuple[str, ...]) -> None:
    cleaned = _free_text(header(name, description), "SeriesDescription")
    assert not [part for part in leaked if part.casefold() in cleaned.casefold()], cleaned
    assert cleaned.startswith("CT ")
