"""Dataset spec strings: `kind:location?option=value&...`, the same object on the CLI, in Python and YAML.

Examples: `nih:/data/cxr14`, `chexpert:/data/CheXpert-v1.0?uncertain=ones&view=frontal`,
`medmnist:pneumoniamnist.npz`, `phantom?n=2000&size=64`, `folder:/data/xray`, `csv:labels.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from medsyn.errors import SpecError

KINDS = ("nih", "chexpert", "medmnist", "ieee8023", "folder", "csv", "phantom")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec. `options` values stay strings; adapters convert and validate them."""

    kind: str
    location: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        text = self.kind + (f":{self.location}" if self.location else "")
        if self.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return text

    def with_options(self, **options: Any) -> DatasetSpec:
        merged = dict(self.options)
        merged.update({k: str(v) for k, v in options.items() if v is not None})
        return DatasetSpec(self.kind, self.location, merged)


def parse_spec(spec: str | DatasetSpec | dict[str, Any]) -> DatasetSpec:
    """Parse `kind:location?k=v&...` (a string), or a YAML mapping `{kind, location, options}`."""
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, dict):
        kind = str(spec.get("kind", ""))
        if kind not in KINDS:
            raise SpecError(f"unknown dataset kind {kind!r} in {spec!r}; expected one of {', '.join(KINDS)}")
        options = {str(k): str(v) for k, v in (spec.get("options") or {}).items()}
        return DatasetSpec(kind, str(spec.get("location", "")), options)
    text = str(spec).strip()
    if not text:
        raise SpecError("empty dataset spec; expected e.g. 'nih:/data/cxr14' or 'phantom'")
    head, _, query = text.partition("?")
    kind, sep, location = head.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise _not_a_spec(text, kind)
    if kind != "phantom" and not location:
        raise SpecError(f"dataset spec {text!r} needs a location, e.g. '{kind}:/path/to/data'")
    options = {}
    for part in query.split("&") if query else []:
        key, eq, value = part.partition("=")
        if not key or not eq:
            raise SpecError(f"bad option {part!r} in dataset spec {text!r}; expected key=value")
        options[unquote(key)] = unquote(value)  # '+' stays '+' (regexes), unlike form decoding
    return DatasetSpec(kind, location if sep else "", options)


def _not_a_spec(text: str, kind: str) -> SpecError:
    """The error for text that names no known kind. Commands also accept a prepared cache folder, so text
    that is a path (or looks like one) is answered about the path, not about spec syntax."""
    path = Path(text).expanduser()
    if path.exists():
        kinds = ("folder", "nih", "chexpert", "ieee8023") if path.is_dir() else ("csv", "medmnist")
        return SpecError(
            f"{text}: not a prepared medsyn cache (no meta.json) and not a dataset spec; to read it as data, "
            f"name its format: {' or '.join(f'{k}:{text}' for k in kinds)}"
        )
    if "/" in kind or "\\" in kind or kind.startswith((".", "~")):
        return SpecError(f"{text}: no such file or folder")
    return SpecError(f"unknown dataset spec {text!r}: kind must be one of {', '.join(KINDS)} (and no such path exists)")
