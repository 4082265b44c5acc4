"""A text corpus about the demo world, one sentence a line, for the contextual bank (LatentLens): the
phrases a demo image's tokens could stand for (colours, shapes, places, sizes), so the demo lens has
something true to find."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from halp.data.demo import COLOURS, SHAPES

log = logging.getLogger(__name__)
PLACES = ("top left", "top right", "bottom left", "bottom right", "centre", "top", "bottom", "left", "right")
SIZES = ("small", "large", "tiny", "big")
TEMPLATES = (  # no "a"/"an" before a colour: "a orange" would teach the wrong article
    "There is one {c} {s} in the image.",
    "One {c} {s} at the {p}.",
    "The {s} at the {p} is {c}.",
    "I see a {z} {c} {s} next to the {c2} {s2}.",
    "The image shows one {c} {s} and one {c2} {s2}.",
    "The faint {c} {s} lies on a light background.",
    "The {c} {s} is {z}.",
    "Is there one {c} {s} in the image?",
    "What color is the {s}? It is {c}.",
    "No {c} {s} is in the picture, only the {c2} {s2}.",
)


def demo_corpus(n_sentences: int, seed: int) -> list[str]:
    rng = random.Random(f"demo-corpus/{seed}")
    colours, shapes = list(COLOURS), list(SHAPES)
    return [
        rng.choice(TEMPLATES).format(
            c=rng.choice(colours),
            s=rng.choice(shapes),
            c2=rng.choice(colours),
            s2=rng.choice(shapes),
            p=rng.choice(PLACES),
            z=rng.choice(SIZES),
        )
        for _ in range(n_sentences)
    ]


def write_demo_corpus(path: Path, n_sentences: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(demo_corpus(n_sentences, seed)) + "\n")
    log.info("demo corpus: %d sentences -> %s", n_sentences, path)
    return path


def read_corpus(path: Path) -> list[str]:
    """One sentence a line; blank lines are skipped (sentence numbers count the kept lines)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus {path} not found: point lens.corpus at a text file, one sentence a line, or run "
            "`halp prepare-corpus` for the demo's"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(
            f"corpus {path} is not UTF-8 text (line {line}, byte {err.start}: {err.reason}); lens.corpus "
            "needs a text file, one sentence a line"
        ) from None
    sentences = [line.strip() for line in text.splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError(f"corpus {path} holds no sentence: write one sentence a line")
    return sentences
