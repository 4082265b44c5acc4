"""Versions of the code whose numbers are stored: bump one when a change alters what its stage stores.

A refactor that stores the same numbers keeps its version, so it re-extracts nothing. A bump reaches both
guards of a stored folder: the version is part of the folder's configuration hash (its old parts become
stale, never mixed with new ones) and a DVC param of the stage (`dvc repro` reruns it). The numbers a
small run stores are committed in tests/versions/reference.json; `tests/test_versions.py` fails when they
move while the version stays. DVC reads this file's plain assignments as params: keep them literals.
"""

EXTRACTION = 1  # halp extract: VF, VT, QT, answers, first-token log-probs
IMAGE_ATTENTION = 1  # halp extract with image_attention on: attention to the image per layer and head
VISION_TOKENS = 1  # halp vision-tokens: every image token's statistics (and vectors)
BANK = 1  # halp contextual-bank: the corpus's contextual embeddings
LENS = 1  # halp lens: each image token's readings under the three lenses
