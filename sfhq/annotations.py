"""What SFHQ's annotation files mean, as plain data shared by the annotator and the clients.

The 19 CelebAMask-HQ classes of a segmentation map (its pixel values are these indices), the
on-screen colour of each (face-parsing.PyTorch's `vis_parsing_maps` as it appears: its triples are
written into a BGR image, so each RGB colour here is the reversed triple; the background is never
painted), and the groups of the 110 landmarks (docs/landmarks.md). Names use the subject's own
left/right as iBUG and CelebAMask-HQ do (the subject's right eye is on the image's left).
"""

from __future__ import annotations

# The key of the CLIP ViT-L/14@336 features in SFHQ's feature pickles (and in Item.features).
CLIP_FEATURE_KEY = "CLIP_ViTL_14@336"

PARSING_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)

# face-parsing.PyTorch's part_colors (first 19, one per class) as they are stored: BGR.
_PART_COLORS_BGR: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 0, 85),
    (255, 0, 170),
    (0, 255, 0),
    (85, 255, 0),
    (170, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (0, 85, 255),
    (0, 170, 255),
    (255, 255, 0),
    (255, 255, 85),
    (255, 255, 170),
    (255, 0, 255),
)
# On-screen RGB; the original never paints the background, so it stays white.
PARSING_COLORS: tuple[tuple[int, int, int], ...] = ((255, 255, 255),) + tuple(
    (r, g, b) for b, g, r in _PART_COLORS_BGR[1:]
)

# (name, first index, one past the last index)
LANDMARK_GROUP_TABLE: tuple[tuple[str, int, int], ...] = (
    ("jaw", 0, 17),
    ("right_brow", 17, 22),
    ("left_brow", 22, 27),
    ("nose_bridge", 27, 31),
    ("nostrils", 31, 36),
    ("right_eye", 36, 42),
    ("left_eye", 42, 48),
    ("outer_lip", 48, 60),
    ("inner_lip", 60, 68),
    ("nose_wings", 68, 72),
    ("inner_lip_extra", 72, 80),
    ("inner_hairline", 80, 89),
    ("outer_hairline", 89, 110),
)
NUM_LANDMARKS = 110

# One colour per landmark group, chosen to stay readable on skin, hair and the parsing colours.
LANDMARK_GROUP_COLORS: dict[str, tuple[int, int, int]] = {
    "jaw": (255, 255, 255),
    "right_brow": (255, 200, 0),
    "left_brow": (255, 200, 0),
    "nose_bridge": (255, 120, 0),
    "nostrils": (255, 120, 0),
    "right_eye": (0, 230, 255),
    "left_eye": (0, 230, 255),
    "outer_lip": (255, 0, 120),
    "inner_lip": (255, 80, 200),
    "nose_wings": (255, 40, 40),
    "inner_lip_extra": (180, 0, 255),
    "inner_hairline": (40, 255, 40),
    "outer_hairline": (255, 255, 0),
}
