"""Small immutable result types."""

from __future__ import annotations

from typing import NamedTuple


class Box(NamedTuple):
    """Axis-aligned box in pixels, corners (xmin, ymin) inclusive-exclusive (xmax, ymax)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return max(0.0, self.xmax - self.xmin)

    @property
    def height(self) -> float:
        return max(0.0, self.ymax - self.ymin)

    @property
    def area(self) -> float:
        return self.width * self.height

    def iou(self, other: "Box") -> float:
        inter = Box(max(self.xmin, other.xmin), max(self.ymin, other.ymin),
                    min(self.xmax, other.xmax), min(self.ymax, other.ymax)).area
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


class Detection(NamedTuple):
    """One detected object: box in the original image's pixels, score in [0, 1], class id and label."""

    box: Box
    score: float
    class_id: int
    label: str

    def to_dict(self) -> dict:
        return {"box": [round(v, 2) for v in self.box], "score": round(self.score, 5),
                "class_id": self.class_id, "label": self.label}
