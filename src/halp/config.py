"""params.yaml schema: every setting a user varies, validated once with messages that say how to fix it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PARAMS = Path("params.yaml")
NONE_CSV = Path("data/none.csv")  # an empty file: "none" for a CSV that dvc.yaml names as a dependency


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says what is wrong and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _path_not_null(value: object) -> object:
    """DVC interpolates these paths into dvc.yaml's dependencies and fails on null with an "unexpected
    error" in every command; a file that holds no rows is how such a setting says none."""
    if value is None:
        raise ValueError(
            f"null cannot mean none here: dvc.yaml names this path as a dependency and DVC fails on null. "
            f"For none, set it to {NONE_CSV} (an empty file) or to any CSV that holds only its header"
        )
    return value


# A CSV that dvc.yaml depends on; None (the Python API's default) and a file without rows mean none
OptionalCSV = Annotated[Path | None, BeforeValidator(_path_not_null)]


class DemoSettings(_Section):
    """The generated demo dataset (`halp prepare-data`)."""

    out_dir: Path = Path("data/demo")
    n_images: int = Field(48, ge=1)
    seed: int = 0


class TinySettings(_Section):
    """Tiny randomly initialised models of the real architectures (`halp build-tiny`)."""

    out_dir: Path = Path("models/tiny")
    seed: int = 0
    archs: list[str] = Field(
        [
            "qwen2_vl",
            "qwen2_5_vl",
            "mllama",
            "phi4mm",
            "llava_next",
            "gemma3",
            "smolvlm",
            "fast_vlm",
            "molmo2",
        ]
    )


class TrainingRecipe(_Section):
    """How a demo organism is trained (`halp train-demo`); the budget is steps, not seconds."""

    seed: int = 0
    n_images: int = Field(3000, ge=1, description="training scenes, drawn apart from the evaluation set")
    false_premise_keep: float = Field(0.3, ge=0, le=1, description="share of false premises trained on")
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(48, ge=1, description="questions per step (images, each with all its open ones)")
    learning_rate: float = Field(7e-4, gt=0)
    warmup_steps: int = Field(100, ge=1)
    curriculum: list[int] = Field(
        [200, 400], description="steps at which shape questions, then all the others, join colour ones"
    )
    heldout_images: int = Field(
        100, ge=1, description="scenes of the training world never trained on, asked every eval_every steps"
    )
    eval_every: int = Field(250, ge=1, description="steps between held-out evaluations (and after the last)")


ORGANISM_ARCHS = ("qwen2_vl", "mllama", "gemma3", "smolvlm")  # the synthetic builders with a "demo" size


class Subject(BaseModel):
    """One organism: its architecture, and any training setting that differs from the shared recipe."""

    model_config = ConfigDict(extra="allow")
    arch: Literal[ORGANISM_ARCHS]  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _overrides_are_recipe_settings(self) -> Subject:
        if unknown := sorted(set(self.model_extra or {}) - set(TrainingRecipe.model_fields)):
            raise ValueError(
                f"{', '.join(unknown)} is not a training setting; a subject may set arch and any of "
                f"{', '.join(TrainingRecipe.model_fields)}"
            )
        return self


class OrganismSettings(_Section):
    """The demo organisms: small VLMs of several architectures trained here on the demo world, one
    `train-demo@NAME` stage each, each saved to models_dir/NAME (and extracted as `models.NAME`)."""

    models_dir: Path = Path("models/organisms")
    metrics_dir: Path = Field(Path("metrics/demo"), description="NAME.json: final loss, held-out accuracy")
    live_dir: Path = Field(Path("reports/training"), description="NAME/: DVCLive's curves (dvc plots)")
    recipe: TrainingRecipe = TrainingRecipe()
    subjects: dict[str, Subject] = Field(default_factory=lambda: {"demo_vlm": Subject(arch="qwen2_vl")})

    @model_validator(mode="after")
    def _recipes_valid(self) -> OrganismSettings:
        for name in self.subjects:
            try:
                self.recipe_for(name)
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(f"subjects.{name}: {problems}") from None
        return self

    def recipe_for(self, name: str) -> TrainingRecipe:
        """The shared recipe with the subject's own settings over it."""
        if name not in self.subjects:
            known = ", ".join(sorted(self.subjects)) or "(none)"
            raise ConfigError(f"unknown organism {name!r}: organism.subjects holds {known}")
        return TrainingRecipe.model_validate(self.recipe.model_dump() | self.subjects[name].model_extra)


class DataSettings(_Section):
    """Which dataset to sample from, in which format, how its columns are named, and how to sample."""

    format: Literal["halp", "pope", "haloquest", "amber", "hf"] = Field(
        "halp", description="halp: HALP's CSV; or a benchmark's files as published (docs/data.md)"
    )
    source: Path = Field(
        Path("data/demo/questions.csv"), description="the CSV, or the benchmark's file or folder"
    )
    images_dir: Path = Path("data/demo/images")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="our column name -> the CSV's column name, for CSVs that name them differently",
    )
    sample_size: int = Field(64, ge=1)
    seed: int = 0
    drop_invalid: bool = False
    out: Path = Path("data/sampled/samples.csv")
    rejected: Path = Field(
        Path("data/sampled/rejected.csv"), description="rows left out by drop_invalid, each with its reason"
    )
    embedded_images: Path = Field(
        Path("data/sampled/images"),
        description="where images stored inside the dataset (parquet, Arrow) are written, named by content",
    )


Layer = int | float


def _layers_are_numbers(layers: object) -> object:
    """YAML's `true` and `"2"` would pass as 1 and 2 (and delete the parts of the real layers)."""
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, bool) or not isinstance(layer, int | float):
            raise ValueError(
                f"layer {layer!r} is neither a block index (2, -1) nor a fraction of depth (0.5): "
                "write the number without quotes"
            )
    return layers


def _layers_well_formed(layers: list[Layer]) -> list[Layer]:
    if not layers:
        raise ValueError("give at least one layer, e.g. [0, 0.5, 1.0]")
    typed = [(isinstance(layer, float), layer) for layer in layers]  # 1 is block 1, 1.0 the last block
    if repeated := sorted({layer for kind, layer in typed if typed.count((kind, layer)) > 1}):
        raise ValueError(f"layer(s) {repeated} listed more than once: give each block once")
    for layer in layers:
        if isinstance(layer, float) and not 0.0 <= layer <= 1.0:
            raise ValueError(
                f"fractional layer {layer} must lie in [0, 1] (0 = first block, 1.0 = last block); "
                "write an integer for a block index"
            )
    return layers


# Block indices (negative from the end) or fractions of depth, checked as numbers
Layers = Annotated[list[Layer], BeforeValidator(_layers_are_numbers), AfterValidator(_layers_well_formed)]


class ModelSettings(_Section):
    """One entry of the `models` map: what to load and how to extract from it."""

    model: str = Field(description="hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct) or a local folder")
    revision: str | None = None
    layers: Layers = [0, 0.5, 1.0]
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    storage_dtype: Literal["float32", "float16"] = "float32"
    device: str = "auto"
    device_map: str | None = Field(
        None, description="e.g. auto: accelerate splits a model too big for one GPU over all visible GPUs"
    )
    max_samples: int | None = Field(
        None,
        ge=1,
        description="extract only the sample's first N rows (a random subset: the sample is shuffled)",
    )
    batch_size: int = Field(8, ge=1)
    checkpoint_interval: int = Field(256, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    image_attention: bool = Field(
        False,
        description="also store the vision and query tokens' attention to the image tokens per layer and "
        "head (share and entropy), under any attention kernel",
    )
    modules: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="globs of module names (`halp modules --model NAME` lists them), e.g. "
        "model.language_model.layers.*.mlp: their outputs at the vision and query tokens are stored too",
    )

    @field_validator("device")
    @classmethod
    def _device_known(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return device


class ExtractSettings(_Section):
    out_dir: Path = Path("data/embeddings")
    fingerprint_dir: Path = Field(
        Path("data/fingerprints"),
        description="`halp fingerprint`: one file per model, changed with its weights",
    )
    top_k: int = Field(5, ge=1)
    launcher: Literal["none", "torchrun", "accelerate"] = Field(
        "none", description="`halp extract` starts `processes` data-parallel workers itself through it"
    )
    processes: int = Field(1, ge=1, description="workers per node under the launcher (e.g. one per GPU)")
    write_retry_seconds: list[float] = Field(
        [2, 10, 30], description="waits before each new try of a failed part write (a disk full for a moment)"
    )
    prefetch: bool = Field(
        False,
        description="prepare the next batch in a background thread, in page-locked memory (for GPUs)",
    )


class LLMJudgeSettings(_Section):
    url: str = "http://localhost:8000/v1"
    model: str = "judge"
    api_key_env: str = "OPENAI_API_KEY"
    prompt: str = (
        "Question: {question}\nReference answer: {ground_truth}\nModel answer: {answer}\n"
        "Does the model answer contradict the reference or assert something the image does not show? "
        "Reply with one word first: HALLUCINATED or CORRECT."
    )
    retry_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        [1, 4, 15],
        description="waits before each new try of a request that failed for a moment (503, timeout)",
    )


class LensJudgeSettings(LLMJudgeSettings):
    """The lens's optional judge: a multimodal chat endpoint shown a token's patch and a lens's top words."""

    prompt: str = (
        "The image is one patch of a larger image. A method that reads what a vision-language model sees "
        "in this patch proposes these words: {words}. Does any of them describe what the patch shows (an "
        "object, its colour or shape, or plain background)? Reply YES or NO first, then one sentence why."
    )
    tokens: int = Field(50, ge=1, description="tokens judged (a seeded draw), each for every lens and layer")


class LabelSettings(_Section):
    judge: Literal["rules", "ratio", "llm"] = "rules"
    ratio_threshold: float = Field(0.5, ge=0, le=1)
    overrides: OptionalCSV = Field(None, description="reviewed CSV (question_id, label) applied last")
    llm: LLMJudgeSettings = LLMJudgeSettings()
    out_dir: Path = Path("data/labels")
    metrics_dir: Path = Path("metrics/labels")


class ProbeSettings(_Section):
    seeds: int = Field(5, ge=1, description="grouped splits, one per seed")
    probes: list[Literal["mlp", "logistic"]] = ["mlp", "logistic"]
    bootstrap: int = Field(200, ge=0, description="test-set resamples per seed for the AUROC interval")
    mlp_rank: int | None = Field(
        32, ge=1, description="factorise the MLP's first layer at this rank (null: HALP's full layer)"
    )
    workers: int | None = Field(
        None, ge=1, description="processes fitting probes, one representation each (null: one per core)"
    )
    breakdown: OptionalCSV = Field(
        None, description="CSV of question_id and a group (e.g. data/demo/mechanisms.csv): AUROC per group"
    )
    transfer: bool = Field(
        True, description="train each chosen cell per group of questions and without each (transfer)"
    )
    transfer_seeds: int = Field(
        3, ge=1, description="the transfer runs on the first this many of the grid's splits (at most seeds)"
    )
    out_dir: Path = Path("metrics/probes")
    test_scores_dir: Path = Field(
        Path("data/probes"), description="every sample's out-of-fold test score of each probe and baseline"
    )
    headline_dir: Path = Field(
        Path("metrics/headline"), description="per model the few numbers an experiment is compared by"
    )
    control_dir: Path = Field(
        Path("data/controls"), description="`halp probe --control`'s results: beside, not among, the metrics"
    )


# every representation the probe grid reads, in its order; the last three where image attention was
# extracted: per layer, all layers' concatenated (DHCP's input), and the query token beside them
Representation = Literal[
    "vision_only",
    "vision_token",
    "query_token",
    "image_attention",
    "image_attention_all",
    "query_token+image_attention",
]


class GuardSettings(_Section):
    """The probe `halp guard` saves and uses before the answer; unset fields are chosen by validation AUROC
    (never by the test split)."""

    models: list[str] = Field(
        default_factory=list,
        description="names from the models map to fit a guard for (labels of both kinds)",
    )
    representation: Representation | None = None
    layer: int | None = Field(None, ge=0, description="a block the extraction stored (None: the best)")
    probe: Literal["mlp", "logistic"] | None = None
    coverages: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.9, 0.8, 0.7], description="answered fractions the guard keeps a risk threshold for"
    )
    out_dir: Path = Path("models/guards")


class CorpusSettings(_Section):
    """The demo's text corpus for the contextual bank (`halp prepare-corpus`)."""

    out: Path = Path("data/corpus/demo.txt")
    sentences: int = Field(2000, ge=1)
    seed: int = 0


class LensSettings(_Section):
    """Every vision token at every layer (`halp vision-tokens`), for the models in `models`."""

    models: list[str] = Field(
        default_factory=list, description="names from the models map whose decoder sees image tokens"
    )
    layers: Layers | Literal["all"] = Field(
        "all", description="blocks as in models.NAME.layers, or all; the LM's input is always kept too"
    )
    save_tensors: bool = Field(False, description="keep every token's vector, not only per-image statistics")
    corpus: Path = Field(Path("data/corpus/demo.txt"), description="text, one sentence a line, for the bank")
    bank_layers: Layers | Literal["all"] = Field(
        "all", description="blocks whose residual stream the bank keeps"
    )
    max_per_token: int = Field(20, ge=1, description="bank rows per token string at most (a seeded choice)")
    max_tokens: int = Field(
        512,
        ge=2,
        description="a corpus sentence's tokens at most: a longer one is cut, with a log line naming it",
    )
    seed: int = 0
    bank_dtype: Literal["float16", "float32"] = "float16"
    bank_dir: Path = Path("data/banks")
    bank_metrics_dir: Path = Field(Path("metrics/banks"), description="rows, token strings, sentences used")
    top_k: int = Field(5, ge=1, description="neighbours kept per lens, token and layer")
    bank_cache_gb: float = Field(
        4.0, ge=0, description="a bank whose copies (stored, and screen) fit stays on the device, else chunks"
    )
    bank_part_rows: int = Field(65536, ge=1, description="bank rows per part file")
    lens_dir: Path = Path("data/lens")
    lens_metrics_dir: Path = Field(
        Path("metrics/lens"), description="top-1 similarity, bank layers, agreement"
    )
    view_dir: Path = Field(
        Path("reports/lens"), description="a page per model: images and their tokens' words"
    )
    view_images: int = Field(6, ge=0, description="images shown on that page")
    judge: Literal["none", "llm"] = Field(
        "none",
        description="llm: ask lens.llm whether a token's top words describe its patch (no ground truth)",
    )
    llm: LensJudgeSettings = LensJudgeSettings()
    ground_truth: OptionalCSV = Field(
        None, description="what each image token's cell holds (the demo's cells.csv): scores the readings"
    )
    out_dir: Path = Path("data/vision_tokens")
    metrics_dir: Path = Field(Path("metrics/vision_tokens"), description="per-layer means (DVC metrics)")
    plots_dir: Path = Field(Path("reports/vision_tokens"), description="the same by layer, for dvc plots")


class ReportSettings(_Section):
    out_dir: Path = Path("reports")


class SummarySettings(_Section):
    out_dir: Path = Path("metrics/summary")


class Params(_Section):
    demo: DemoSettings = DemoSettings()
    tiny: TinySettings = TinySettings()
    organism: OrganismSettings = OrganismSettings()
    data: DataSettings = DataSettings()
    extract: ExtractSettings = ExtractSettings()
    models: dict[str, ModelSettings]
    summary: SummarySettings = SummarySettings()
    label: LabelSettings = LabelSettings()
    probe: ProbeSettings = ProbeSettings()
    guard: GuardSettings = GuardSettings()
    corpus: CorpusSettings = CorpusSettings()
    lens: LensSettings = LensSettings()
    report: ReportSettings = ReportSettings()
    _source: Path = PrivateAttr(DEFAULT_PARAMS)  # the file these came from, for messages

    @model_validator(mode="after")
    def _named_models_configured(self) -> Params:
        """A name DVC's foreach would meet only as a missing file is refused by name here."""
        for section in ("guard", "lens"):
            if unknown := [name for name in getattr(self, section).models if name not in self.models]:
                raise ValueError(
                    f"{section}.models names {', '.join(unknown)}, which the models map does not configure "
                    f"(it has {', '.join(sorted(self.models))}): add models.{unknown[0]} or remove the name"
                )
        return self

    def model(self, name: str) -> ModelSettings:
        """The settings of one configured model, or an error naming the ones that exist."""
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "(none)"
            raise ConfigError(
                f"unknown model name {name!r}: {self._source} configures {known}. "
                f"Add a `models.{name}` entry to {self._source} or pick one of those."
            )
        return self.models[name]


def _problem(error: dict) -> str:
    where = ".".join(map(str, error["loc"]))  # empty for a check across sections
    return f"  - {where}: {error['msg']}" if where else f"  - {error['msg']}"


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; a bad file gives one message listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the repository root or pass --params PATH")
    try:
        with path.open() as f:  # a stream, so YAML's messages name the file
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML; fix it where this points:\n{err}") from None
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        problems = "\n".join(_problem(e) for e in err.errors(include_url=False))
        raise ConfigError(f"{path} is invalid:\n{problems}") from None
    params._source = path
    return params
