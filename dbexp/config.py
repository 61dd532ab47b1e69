"""Every schema of dbexp's configs, in one place, and :func:`register_configs`.

Each dataclass types one config group (``conf/<group>/*.yaml``); the group's YAML files set only what
differs from these defaults. :func:`register_configs` puts the root schemas into Hydra's ConfigStore, so
a wrong key or type fails at compose time; every command and the tests call it before composing.
The checks of a group's values (``check_*``) live with the module that owns the group
(``docs/architecture.md`` has the table).

Renamed keys are in :data:`MOVED_KEYS`: an old key on the command line stops with one line naming
the new one (:func:`check_moved_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """``conf/model``: which weights, and their architecture (owner: ``dbexp.model_loading``)."""

    name: str = MISSING
    pretrained: str | None = None  # hub id or local diffusers folder; null: build ``architecture`` into the cache
    revision: str | None = None
    variant: str | None = None
    vae: str | None = None  # hub id or folder of a VAE used instead of the model's own (SDXL in fp16: its fp16 fix)
    init: str = "pretrained"  # pretrained | random (``architecture`` in memory, no download)
    resolution: int = 512
    buckets: bool = False  # trained at aspect-ratio buckets by default (data.buckets follows it): SDXL
    prediction_type: str | None = None  # null: the scheduler's own
    eval_metrics: str = "dreambench"  # the metric suite that suits this model (``eval.metrics=auto``)
    export_dtype: str = "float16"  # what its exports are written in (``export.dtype=auto``): what users load
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoraConfig:
    """``finetune.lora``: the adapters when ``finetune.method=lora`` (owner: ``dbexp.finetune``)."""

    rank: int = 4
    alpha: float | None = None  # null: = rank (scale 1)
    dropout: float = 0.0
    unet_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    text_encoder_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


@dataclass
class FinetuneConfig:
    """``conf/finetune``: how the weights are trained (owner: ``dbexp.finetune``)."""

    method: str = "full"  # full: every weight of the trained parts | lora: adapters only
    train_text_encoder: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    min_snr_gamma: float | None = None  # null: off
    noise_offset: float = 0.0


@dataclass
class DataConfig:
    """``conf/data`` (owner: ``dbexp.datamodule``): which photos are the subject, how the prompt reads."""

    subject: str | None = None  # a DreamBench subject under dreambench_root (ignored when instance_dir is set)
    dreambench_root: str | None = None  # a DreamBench-style folder; null: the bundled copy (subject dog only)
    instance_dir: str | None = None  # your own folder of 3-5 photos of the subject (then set class_noun)
    class_noun: str | None = None  # e.g. dog, mug; null: from DreamBench's class table
    token: str = "sks"  # the rare identifier bound to the subject
    prompt_template: str = "a photo of {token} {class_noun}"  # the instance prompt
    resolution: int = 512  # training image size, a multiple of 8 (conf/data follows model.resolution)
    center_crop: bool = True  # false: random crops (then latents cannot be cached)
    random_flip: bool = False  # off: many subjects are not symmetric
    batch_size: int = 1  # instance images per step (plus as many class images with the prior)
    num_workers: int = 0  # DataLoader workers (photos are decoded once and held in memory)
    cache_latents: bool = True  # VAE latents of centre crops encoded once, in the shared cache
    cache_text_embeddings: bool = True  # the fixed prompts encoded once while the text encoder is frozen
    # Aspect-ratio buckets: each photo trains at the bucket (about resolution² pixels, sides multiples of
    # bucket_step, aspect ≤ bucket_max_aspect) nearest its own shape, not a centre-cropped square; each batch
    # from one bucket, class images drawn at the buckets' sizes. conf/data follows model.buckets (SDXL: on).
    buckets: bool = False
    bucket_step: int = 64
    bucket_max_aspect: float = 2.0


@dataclass
class PriorConfig:
    """``conf/prior`` (owner: ``dbexp.prior_cache``): class images made by the base model keep the class
    from drifting toward the subject."""

    weight: float = 1.0  # loss = instance + weight × prior; 0 (or prior=none) turns it off
    class_prompt: str = "a photo of {class_noun}"  # what the class images show (and are trained with)
    class_dir: str | None = None  # a folder of your own class photos instead of generated ones (read only)
    num_class_images: int = 100  # the paper: ~200-1000; diffusers' example: 100-300
    negative_prompt: str = ""
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    sampler: str | None = None  # null: the model's own | ddim | dpmsolver++ | euler | ... (dbexp.sampling)
    batch_size: int = 4  # class images per generation batch
    seed: int = 0  # image i uses seed + i, so any prefix of the set is reproducible


@dataclass
class OptimizerConfig:
    """``conf/optimizer`` (owner: ``dbexp.optimization``). The defaults are AdamW as in the DreamBooth paper
    and diffusers' example."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 5e-6  # the UNet's (paper, diffusers: 5e-6; faces 1e-6..2e-6; LoRA ~100x more)
    text_encoder_lr: float | None = None  # null: lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only
    eps: float = 1e-8  # AdamW only
    weight_decay: float = 1e-2  # decoupled (AdamW) or L2 (SGD)
    momentum: float = 0.0  # SGD only
    nesterov: bool = False  # SGD only
    lr_schedule: str = "constant"  # constant | linear | cosine, each after the warm-up
    warmup_steps: int = 0  # linear warm-up from 0 to lr


@dataclass
class MemoryConfig:
    """``conf/memory`` (owner: ``dbexp.memory``): memory savers, by GPU tier (memory=24gb|16gb|12gb). The
    defaults are PyTorch's own: every activation kept, SDPA attention."""

    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, slower steps
    optimizer_8bit: bool = False  # bitsandbytes AdamW8bit: 2 bytes of state per weight instead of 8
    attention: str = "sdpa"  # sdpa: PyTorch's flash / memory-efficient kernels | eager: the full matrix
    set_to_none: bool = True  # free gradients between steps instead of zero-filling them
    offload_frozen: bool = False  # frozen VAE / text encoder on the CPU while their outputs come from caches
    # finetune=lora: the frozen base weights under the adapters (UNet, text encoders) held in half precision,
    # the adapters in float32 — diffusers' LoRA scripts' weight_dtype. auto: the type a mixed trainer.precision
    # computes in (float32 otherwise) | bfloat16 | float16 | null (float32). A full fine-tune ignores it.
    lora_base_dtype: str | None = None


@dataclass
class EvalConfig:
    """``conf/eval`` (owner: ``dbexp.eval_protocol``): the sample grids, and the metric evaluation."""

    # Sample grids: rows = prompts ({token} and {class_noun} filled in), columns = seeds, the same noise
    # at every step.
    prompts: list[str] = field(
        default_factory=lambda: [
            "a photo of {token} {class_noun}",  # fidelity to the photos
            "a {token} {class_noun} on the beach",  # recontextualisation
            "a {token} {class_noun} in the snow",
            "a photo of {class_noun}",  # the bare class prompt: shows drift toward the subject
        ]
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    guidance_scale: float = 7.5
    num_inference_steps: int = 25
    negative_prompt: str = ""
    sampler: str | None = None  # null: the model's own | ddim | dpmsolver++ | euler | ... (dbexp.sampling)
    every_n_steps: int = 100  # samples/step_<N>.png every N steps (0: only final.png)
    at_start: bool = True  # also samples/step_0.png: the base model
    batch_size: int = 8  # images per generation batch
    # The metrics (dbexp.metric_suites): DINO, CLIP-I, CLIP-T, PRES, DIV; or the toy oracle's.
    metrics: str = "auto"  # auto: the model's suite (model.eval_metrics) | dreambench | tiny | toy | none
    baseline: bool = False  # also evaluate the base model first (base/* in metrics.json, before → after)
    dino_model: str = "facebook/dino-vits16"  # DINO ViT-S/16: hub id or local folder
    dino_revision: str | None = "refs/pr/1"  # its safetensors conversion (main holds only a pickle)
    clip_model: str = "openai/clip-vit-large-patch14"  # the paper names none; ViT-L/14 has safetensors
    clip_revision: str | None = None
    prompt_set: str = "auto"  # auto: DreamBench's objects or live subjects, by class | object | live | custom
    custom_prompts: list[str] = field(default_factory=list)  # prompt_set=custom: templates with {token}, {class_noun}
    num_prompts: int | None = None  # the first N prompts of the set (null: all 25)
    images_per_prompt: int = 4  # the paper's count
    pres_images: int = 8  # images of the bare class prompt, for PRES
    class_prompt: str = "a {class_noun}"  # the bare class prompt of PRES
    # The final evaluation, one block per scale (the first is the objective); by default the grids' guidance.
    guidance_scales: list[float] = field(default_factory=lambda: ["${eval.guidance_scale}"])
    metric_seed: int = 0  # image i of prompt k always gets the same seed, made from (metric_seed, k, i)
    final: bool = True  # the full evaluation after training, into metrics.json
    metrics_every_n_steps: int = 0  # the fast subset during training, logged as eval/* (0: off)
    subset_prompts: int = 4  # prompts of the fast subset
    subset_images_per_prompt: int = 2
    score: dict[str, float] | None = None  # eval/score = Σ weight · eval/<metric>; null: the suite's own weights
    # The validation loss (dbexp.validation): the diffusion loss on fixed inputs, no sampling — val/loss_instance,
    # val/loss_prior (on class images of the base model that training never sees), val/seconds.
    val_every_n_steps: int = 0  # 0: off; else at step 0 and every N steps
    val_class_images: int = 8  # class images of the validation set (0: no val/loss_prior)
    val_timesteps: int = 4  # timesteps per image, spread over the schedule


@dataclass
class PruningConfig:
    """``pruning`` (owner: ``dbexp.pruning``): what a sweep trial reports to the sweep's pruner
    (``hydra/sweeper/pruner=median|…``), every time the run measures it during training."""

    # null: the (first) optimized_metric, as the in-training evaluation measures it. Any in-training value:
    # val/loss_prior, val/loss_instance (every eval.val_every_n_steps), eval/<metric> (every
    # eval.metrics_every_n_steps), train/loss (every trainer.log_every_n_steps). Its direction comes from
    # the metric registry (dbexp.metric_suites): a loss is reported negated to a study that maximizes.
    metric: str | None = None
    # A cheaper signal for the first steps: before step early_until the trial reports early_metric instead
    # (e.g. val/loss_instance — has it begun to learn the subject? — before the first sampled evaluation).
    # Each step reports one signal; use successive halving or Hyperband (they compare values reported at one
    # step; median and percentile pruners compare a trial's best value so far). null: metric throughout.
    early_metric: str | None = None
    early_until: int = 0


@dataclass
class ExportConfig:
    """``conf/export``: what a run writes to ``<run dir>/pipeline/`` (owner: ``dbexp.export``)."""

    enabled: bool = True  # false: no export (a sweep's trained weights stay in the cache)
    dtype: str = "auto"  # auto: model.export_dtype | float16 | bfloat16 | float32
    # diffusers: the diffusers folder (full) or diffusers' LoRA file; single_file: one .safetensors in the
    # original Stable Diffusion layout (full) or kohya's LoRA names (LoRA), for AUTOMATIC1111 and ComfyUI
    formats: list[str] = field(default_factory=lambda: ["diffusers"])


@dataclass
class PathsConfig:
    """``conf/paths``: where runs and the shared cache live."""

    root_dir: str = MISSING
    log_dir: str = MISSING
    runs_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class TrainConfig:
    """``conf/train.yaml``, the root of ``python -m dbexp.train``."""

    task_name: str = "train"
    seed: int = 0
    ckpt_path: str | None = None
    optimized_metric: Any = "train/loss"  # a metric name, or a list of names (multi-objective)
    # best: with in-training measurements of the (first) optimized metric, the best step's weights are evaluated,
    # exported and cached, and its values are the run's (metrics.json: best_step); last: the last step's.
    objective_at: str = "best"
    reuse_trained: bool | None = None  # null: in sweeps only (dbexp.trained_cache)
    model: ModelConfig = MISSING
    finetune: FinetuneConfig = MISSING
    data: DataConfig = MISSING
    prior: PriorConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    memory: MemoryConfig = MISSING
    eval: EvalConfig = MISSING
    pruning: PruningConfig = field(default_factory=PruningConfig)
    export: ExportConfig = MISSING
    paths: PathsConfig = MISSING
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)


@dataclass
class EvaluateConfig:
    """``conf/evaluate.yaml``, the root of ``python -m dbexp.evaluate``."""

    task_name: str = "evaluate"
    pipeline: str = MISSING
    device: str = "auto"
    dtype: str = "auto"
    resolution: int | None = None  # null: the pipeline's native size
    data: DataConfig = MISSING
    eval: EvalConfig = MISSING
    paths: PathsConfig = MISSING
    logger: dict[str, Any] | None = field(default_factory=dict)


@dataclass
class GeneratePathsConfig:
    root_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class GenerateConfig:
    """``conf/generate.yaml``, the root of ``python -m dbexp.generate``."""

    task_name: str = "generate"
    pipeline: str = MISSING
    prompt: str = MISSING
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    seed: int = 0
    num_images: int = 4
    batch_size: int = 4
    resolution: int | None = None
    sampler: str | None = None  # null: the pipeline's own
    device: str = "auto"
    dtype: str = "auto"
    paths: GeneratePathsConfig = MISSING


#: Root schemas by the name the root configs list in their defaults.
ROOT_SCHEMAS = {"train_schema": TrainConfig, "evaluate_schema": EvaluateConfig, "generate_schema": GenerateConfig}


def register_configs() -> None:
    """The root schemas into Hydra's ConfigStore (idempotent): call before composing any dbexp config."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in ROOT_SCHEMAS.items():
        store.store(name=name, node=schema)


#: Keys that moved, old → new (a prefix moves everything under it).
MOVED_KEYS = {
    "model.finetune": "finetune.method",
    "model/lora": "finetune (finetune=toy holds the toy model's LoRA targets)",
    "model.lora": "finetune.lora",
    "model.train_text_encoder": "finetune.train_text_encoder",
    "model.min_snr_gamma": "finetune.min_snr_gamma",
    "model.noise_offset": "finetune.noise_offset",
    "eval.scheduler": "eval.sampler",
    "prior.scheduler": "prior.sampler",
    "optimizer.scheduler": "optimizer.lr_schedule",
    "eval.seed": "eval.metric_seed",
    "export_pipeline": "export.enabled",
}
#: The same for ``python -m dbexp.generate``.
MOVED_GENERATE_KEYS = {"scheduler": "sampler"}


def moved_key(override: str, moved: dict[str, str] = MOVED_KEYS) -> str | None:
    """For one command-line override that sets a moved key: the line that names its new key."""
    key = override.split("=", 1)[0].lstrip("+~")
    for old, new in moved.items():
        if key == old or key.startswith(f"{old}."):
            rest = key[len(old) :]
            target = new if " " in new or not rest else f"{new}{rest}"
            return f"{key}: this key is now {target}"
    return None


def check_moved_keys(overrides: list[str], moved: dict[str, str] = MOVED_KEYS) -> None:
    """One line naming the new key, and exit 2, when an override sets a key that moved."""
    from dbexp.errors import UserInputError, stop

    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        line = moved_key(override, moved)
        if line is not None:
            stop(UserInputError(line))


def prepare_command_line(argv: list[str], moved: dict[str, str] = MOVED_KEYS) -> list[str]:
    """What every dbexp command does before Hydra composes: ``~`` expanded in values, moved keys named,
    the schemas registered. Returns the new ``sys.argv``."""
    from dbexp.console import expand_home_in_overrides

    argv = expand_home_in_overrides(argv)
    check_moved_keys(argv[1:], moved)
    register_configs()
    return argv
