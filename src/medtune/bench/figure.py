"""One measured figure: its value, how it prints, and whether it meets its target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# name -> (comparison, threshold, how the target prints)
TARGETS: dict[str, tuple[str, float, str]] = {
    "encode_once": (">=", 50.0, ">= 50x"),
    "corrupt_throughput": (">=", 0.8, ">= 0.8 of the bare encoder"),
    "dag_paper": ("<", 10.0, "< 10 s"),
    "noop_default": ("<", 10.0, "< 10 s"),
    "end_to_end": ("<=", 600.0, "<= 10 min wall"),
    "startup_share": ("<=", 0.25, "<= 25 % of the summed job seconds"),  # a detail of end_to_end
    "scaling": ("<", 1.0, "time ratio < images ratio"),
    "linear_probe_path": (">=", 10.0, ">= 10x the cold sweep at every size"),
}


def meets(key: str, value: float) -> bool:
    op, threshold, _ = TARGETS[key]
    return {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold, ">": value > threshold}[op]


@dataclass
class Figure:
    key: str
    name: str
    value: float | None  # what the target compares; None: not measured
    shown: str  # the measurement as printed
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # written beside the figure's fields in its JSON

    @property
    def target(self) -> str:
        return TARGETS[self.key][2]

    @property
    def status(self) -> str:
        if self.value is None:
            return "N/A"
        return "PASS" if meets(self.key, self.value) else "MISS"

    def line(self) -> str:
        return f"{self.name}: {self.shown} (target {self.target}) {self.status}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "shown": self.shown, "target": self.target,
                "status": self.status, "details": self.details, **self.data}
