"""The label table a label map file carries, checked against the class map it is measured by.

TotalSegmentator writes the names of a multilabel file's ids into the file (``--ml``): a NIfTI
header extension holding a Caret XML ``LabelTable``, one ``<Label Key="5">liver</Label>`` per
structure. A label map numbered by another class map than the run's is otherwise silently
misnamed: TotalSegmentator v1 numbers 104 structures in another order than v2 (id 7 is the
pancreas in v2, the aorta in v1), and every id of a v1 file is a valid v2 id, so its pancreas
would be measured as the aorta. A table that names only some structures (``--roi_subset``, which
also sets every other voxel to 0) would make the others read as absent. Both are refused, naming
the first disagreeing id and, when one of the shipped class maps agrees with the file, that one.
A file without such a table (nnU-Net's own output, other tools) is read as before.

>>> from cohort.config import ClassMap
>>> classes = ClassMap({1: "spleen", 2: "kidney_right"}, "two.csv")
>>> check_label_table(InputName(Path("seg.nii.gz"), "seg"), {1: "spleen", 2: "kidney_left"}, classes)
Traceback (most recent call last):
...
cohort.errors.SeriesError: seg: label 2 is kidney_left in the file's own label table but kidney_right in two.csv: the label map is numbered by another class map; measure it with the class map it was written with (measure.class_map in a run config)
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from functools import cache
from pathlib import Path

import nibabel as nib

from cohort.config import CONFIG_DIR, ClassMap, load_class_map
from cohort.errors import SeriesError
from cohort.ingest.names import InputName

UNLABELLED_KEY = 0  # background (Connectome Workbench names it "???")


def label_table(image: nib.Nifti1Image) -> dict[int, str] | None:
    """Id -> name of the file's Caret ``LabelTable`` extension (as TotalSegmentator writes it),
    without background; None when the file has none that parses."""
    for extension in image.header.extensions:
        content = extension.get_content()
        if not isinstance(content, bytes) or b"<LabelTable" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.decode("utf-8", errors="replace").strip())
            table = {int(label.get("Key", "")): (label.text or "").strip() for label in root.iter("Label")}
        except (ElementTree.ParseError, ValueError):
            return None
        table.pop(UNLABELLED_KEY, None)
        return table or None
    return None


def check_label_table(name: InputName, table: dict[int, str] | None, class_map: ClassMap) -> None:
    """Raise when ``table`` (the file's own, :func:`label_table`) names an id otherwise than
    ``class_map``, or names fewer structures than it."""
    if table is None:
        return
    source = Path(class_map.source).name
    wrong = sorted(label for label, structure in table.items() if class_map.names.get(label) != structure)
    if wrong:
        label = wrong[0]
        theirs = f"but {class_map.names[label]} in {source}" if label in class_map.names else f"but no id of {source}"
        raise SeriesError(f"{name}: label {label} is {table[label]} in the file's own label table {theirs}"
                          f"{f' ({len(wrong) - 1} more ids disagree)' if len(wrong) > 1 else ''}: the label map is "
                          f"numbered by another class map; {_remedy(table)}")
    missing = [structure for label, structure in class_map.names.items() if label not in table]
    if missing:
        raise SeriesError(f"{name}: its own label table names {len(table)} of the {len(class_map.names)} structures "
                          f"of {source} (not {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): written "
                          "by TotalSegmentator --roi_subset? The others would read as absent; label every structure "
                          "(run it without --roi_subset), or measure with a class map of the labelled structures "
                          "(measure.class_map in a run config)")


def _remedy(table: dict[int, str]) -> str:
    agreeing = [name for name, names in shipped_class_maps().items()
                if all(names.get(label) == structure for label, structure in table.items())]
    if agreeing:
        return f"it agrees with {agreeing[0]}: set measure.class_map: {agreeing[0]} in a run config"
    return "measure it with the class map it was written with (measure.class_map in a run config)"


@cache
def shipped_class_maps() -> dict[str, dict[int, str]]:
    """The class maps of the shipped configs/ folder by file name (not the per-network part maps)."""
    return {path.name: load_class_map(path.name).names for path in sorted(CONFIG_DIR.glob("*class_map*.csv"))
            if not path.stem.endswith("_parts")}
