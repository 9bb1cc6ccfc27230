"""Pictures people look at: the parsing map blended over the image and the landmarks by group.

The colours are face-parsing.PyTorch's `vis_parsing_maps` as they appear on screen
(sfhq/annotations.py), blended the same way (40 % image, 60 % colour, background left white).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw

from services.annotator.landmarks110 import LANDMARK_GROUPS, NUM_LANDMARKS
from services.annotator.parsing import NUM_CLASSES, to_rgb_image, upsample_labels
from sfhq.annotations import LANDMARK_GROUP_COLORS, PARSING_COLORS

PARSING_PALETTE = np.array(PARSING_COLORS, dtype=np.uint8)
GROUP_COLORS = LANDMARK_GROUP_COLORS


def colorize_labels(label_map: np.ndarray) -> np.ndarray:
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"label_map must be 2-D with classes 0..{NUM_CLASSES - 1}")
    return PARSING_PALETTE[labels]


def render_overlay(
    image,
    label_map: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    point_radius: float | None = None,
) -> PIL.Image.Image:
    """The image with the parsing map blended in (resized nearest to the image) and the landmarks
    (68 or 110 points, image pixel coordinates) drawn as dots coloured by group."""
    base = to_rgb_image(image)
    width, height = base.size
    if label_map is not None:
        labels = upsample_labels(np.asarray(label_map, dtype=np.uint8), (width, height))
        blended = 0.4 * np.asarray(base, dtype=np.float32) + 0.6 * colorize_labels(labels).astype(np.float32)
        base = PIL.Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")
    else:
        base = base.copy()
    if landmarks is not None:
        points = np.asarray(landmarks, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] not in (68, NUM_LANDMARKS):
            raise ValueError(f"landmarks must be (68, 2) or ({NUM_LANDMARKS}, 2), got {points.shape}")
        radius = point_radius if point_radius is not None else max(1.5, min(width, height) / 220)
        draw = PIL.ImageDraw.Draw(base)
        for group, indices in LANDMARK_GROUPS.items():
            color = GROUP_COLORS[group]
            for index in indices:
                if index >= len(points) or not np.isfinite(points[index]).all():
                    continue
                x, y = points[index]
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(0, 0, 0))
    return base
