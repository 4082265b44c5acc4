"""For images without ground truth: an LLM judge, as in the LatentLens paper, shown one token's patch of
the image and a lens's top-5 words and asked whether any of them describes what the patch shows. Its
answer is kept with its reason, so a person can check the judge."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pandas as pd
from PIL.Image import Image

from halp.data.images import load_image
from halp.lens.lenses import METHODS
from halp.llm import Endpoint, OffFormat, first_word
from halp.store.reader import LensReadings

log = logging.getLogger(__name__)
FIX = "start it, fix lens.llm.url in params.yaml, or set lens.judge: none"


class LensJudge(Endpoint):
    """An OpenAI-compatible multimodal chat endpoint asked to reply YES or NO, then why."""

    def __call__(self, patch: Image, words: list[str]) -> tuple[bool, str]:
        """(whether a word describes the patch, the judge's reply) for one patch and its top words."""
        buffer = io.BytesIO()
        patch.save(buffer, format="PNG")
        image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        content = [
            {"type": "text", "text": self.prompt.format(words=", ".join(words))},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]
        return self.ask(content, FIX, self._verdict)

    @staticmethod
    def _verdict(reply: str) -> tuple[bool, str]:
        if (word := first_word(reply)) not in ("YES", "NO"):
            raise OffFormat(f"the lens judge replied {reply[:80]!r}; expected YES or NO first")
        return word == "YES", reply[:200]


def patch(image: Image, token: int, grid_h: int, grid_w: int) -> Image:
    """The part of the image a token covers on its grid (row-major, one frame)."""
    row, col = divmod(token, grid_w)
    width, height = image.size
    box = (
        col * width // grid_w,
        row * height // grid_h,
        (col + 1) * width // grid_w,
        (row + 1) * height // grid_h,
    )
    return image.crop(box)


def judge_readings(
    readings: LensReadings,
    found: dict[str, np.ndarray],
    image_paths: dict[str, str],
    judge: LensJudge,
    n_tokens: int,
    seed: int,
) -> dict:
    """`n_tokens` tokens drawn (seeded) from the images whose tokens lie on a grid, each judged for every
    lens at every layer, shown its top-5 words (`top_words`):
    {"share": {lens: {layer: share judged to describe}}, "judgements": [...]}"""
    offsets = np.concatenate([[0], np.cumsum(readings.meta.n_image_tokens)])
    on_grid = (
        readings.meta.grid_t * readings.meta.grid_h * readings.meta.grid_w == readings.meta.n_image_tokens
    )
    candidates = [
        (i, t) for i in np.flatnonzero(on_grid) for t in range(readings.meta.n_image_tokens.iloc[i])
    ]
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:n_tokens]
    judgements = []
    for i, t in sorted(candidates[c] for c in chosen):
        image = readings.meta.iloc[i]
        cropped = patch(load_image(image_paths[image.image_id]), t, image.grid_h, image.grid_w)
        for j, layer in enumerate(readings.layer_names):
            for lens in METHODS:
                top = [str(w) for w in found[lens][offsets[i] + t, j]]
                try:
                    describes, reason = judge(cropped, top)
                except OffFormat as err:  # that judgement's error; the share is over the others
                    log.warning("%s token %d, %s at layer %s: %s", image.image_id, t, lens, layer, err)
                    describes, reason = None, f"error: {err}"
                judgements.append(
                    {"image_id": image.image_id, "token": t, "layer": layer, "lens": lens, "words": top}
                    | {"describes": describes, "reason": reason}
                )
    judged = pd.DataFrame(judgements).dropna(subset=["describes"]) if judgements else pd.DataFrame()
    errors = len(judgements) - len(judged)
    if judged.empty:
        return {"tokens": len(chosen), "errors": errors, "share": {}, "judgements": judgements}
    share = judged.groupby(["lens", "layer"]).describes.mean()
    by_lens = {lens: {layer: share.get((lens, layer)) for layer in readings.layer_names} for lens in METHODS}
    return {"tokens": len(chosen), "errors": errors, "share": by_lens, "judgements": judgements}
