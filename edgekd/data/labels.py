"""Classification labels mapped onto the teacher's classes: a label is one of the teacher's class names
(id2label, case-insensitive) or a class id 0..n-1 (an integer, or a string of one). Anything else (a
float, a boolean, an id the teacher has no class for, a text, data of one class only) is one line
naming the offending value, since training on it would teach the student nonsense and score it as fine.
"""

from __future__ import annotations

from edgekd.errors import EdgekdError

SHOWN = 8  # class names listed in a message


def teacher_classes(config) -> list[str]:
    """The teacher's class names by id (id2label; LABEL_i where it has only num_labels)."""
    id2label = getattr(config, "id2label", None) or {}
    n = len(id2label) or int(getattr(config, "num_labels", 0) or 2)
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def class_of(value, classes: list[str], by_name: dict[str, int], where: str) -> int:
    """The teacher's class id for one label value, or one line naming it."""
    n = len(classes)
    names = ", ".join(classes[:SHOWN]) + (", ..." if n > SHOWN else "")
    fix = (f"give labels as the teacher's class names ({names}) or ids 0..{n - 1}, or pass the right --label-column")
    if isinstance(value, bool) or isinstance(value, float):
        raise EdgekdError(f"label {_shown(value)} in {where} is a {type(value).__name__}, not a class: {fix}")
    if isinstance(value, str):
        if value.strip().lower() in by_name:
            return by_name[value.strip().lower()]
        if value.strip().lstrip("-").isdigit():
            value = int(value)
    if isinstance(value, int) and 0 <= value < n:
        return value
    raise EdgekdError(f"label {_shown(value)} in {where} is not one of the teacher's {n} classes: {fix}")


def map_labels(values: list, classes: list[str], where: str) -> dict:
    """{label value: the teacher's class id} for every distinct value; data of one class is refused."""
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    mapping = {v: class_of(v, classes, by_name, where) for v in values}
    if len(set(mapping.values())) < 2:
        only = next(iter(values), None)
        raise EdgekdError(f"data {where} holds one class only (label {_shown(only)}): a classifier learns and is "
                          f"scored on examples of at least 2 of the teacher's classes; add the others")
    return mapping
