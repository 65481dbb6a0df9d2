"""Class names and category ids of the official checkpoints' datasets (COCO 2017, YouTube-VIS 2019)."""

# The 80 COCO "things" categories as (official category id, name); ids run 1..90 with gaps
# (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused). Contiguous label k (0-based) is entry k.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)

# The 40 YouTube-VIS 2019 categories as (category id, name); ids are 1..40 in this order.
YTVIS2019_CATEGORIES: tuple[tuple[int, str], ...] = tuple(enumerate((
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog",
    "snake", "monkey", "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse",
    "turtle", "bear", "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard",
    "airplane", "truck", "zebra", "tiger", "elephant", "snowboard", "boat", "shark",
    "mouse", "frog", "eagle", "earless_seal", "tennis_racket",
), start=1))

COCO_CLASS_NAMES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in COCO_CATEGORIES)
YTVIS2019_CLASS_NAMES: tuple[str, ...] = tuple(name for _, name in YTVIS2019_CATEGORIES)
YTVIS2019_CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in YTVIS2019_CATEGORIES)

# mmdetection 1.x spells the COCO names with underscores ("traffic_light"); this is the
# `CLASSES` tuple stored in the `meta` of the official MM checkpoints.
MMDET_COCO_CLASSES: tuple[str, ...] = tuple(name.replace(" ", "_") for name in COCO_CLASS_NAMES)
# The VIS checkpoints store the YouTube-VIS names as they are (already underscored).
MMDET_YTVIS_CLASSES: tuple[str, ...] = YTVIS2019_CLASS_NAMES
