"""Dataset spec strings: `kind:location?option=value&...`, the same object on the CLI, in Python and YAML.

Examples: `nih:/data/cxr14`, `chexpert:/data/CheXpert-v1.0?uncertain=ones&view=frontal`,
`medmnist:pneumoniamnist.npz`, `phantom?n=2000&size=64`, `folder:/data/xray`, `csv:labels.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        raise SpecError(f"unknown dataset spec {text!r}: kind must be one of {', '.join(KINDS)}")
    if kind != "phantom" and not location:
        raise SpecError(f"dataset spec {text!r} needs a location, e.g. '{kind}:/path/to/data'")
    options = {}
    for part in query.split("&") if query else []:
        key, eq, value = part.partition("=")
        if not key or not eq:
            raise SpecError(f"bad option {part!r} in dataset spec {text!r}; expected key=value")
        options[unquote(key)] = unquote(value)  # '+' stays '+' (regexes), unlike form decoding
    return DatasetSpec(kind, location if sep else "", options)
