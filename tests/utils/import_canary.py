"""A module whose import writes the file ``$SEPCONV_TEST_CANARY`` names: shows that a hostile file made torch
import a module of its choosing (tests/utils/hostile_files.py, ``pt2_enum_treespec``)."""

import enum
import os

if os.environ.get("SEPCONV_TEST_CANARY"):
    with open(os.environ["SEPCONV_TEST_CANARY"], "w") as f:
        f.write("imported")


class Color(enum.Enum):
    RED = 1
