"""Training configuration: nested dataclasses loaded from YAML with ``key.sub=value`` overrides.

``load_config(path, overrides)`` reads the YAML file, applies each override (the value is parsed
as a YAML scalar/list, so ``algo.beta=0.04`` is a float and ``data.train_file=x.jsonl`` a
string), and builds :class:`TrainConfig`. An unknown key raises one :class:`ConfigError` that
names the key, where it came from (the file or the command line) and the keys that exist there.
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from mixed_r1.rewards.config import RewardConfig


class ConfigError(ValueError):
    """A user-caused configuration error (unknown key, bad value, missing file)."""


@dataclass
class ModelConfig:
    """The policy. ``kind``: ``tiny_qwen25vl`` (random, built from the sizes below with the real
    Qwen2.5 tokenizer) or ``pretrained`` (a local HF directory in ``path``: its own tokenizer,
    chat template, generation config and, for Qwen2.5-VL, image processor are used).
    ``min_pixels``/``max_pixels``: the image budget; unset, a pretrained Qwen2.5-VL keeps its
    ``preprocessor_config.json``'s and the tiny model Qwen2.5-VL's defaults."""

    kind: str = "tiny_qwen25vl"
    path: str | None = None
    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vision_hidden: int = 32
    vision_depth: int = 2
    dtype: str = "float32"  # float32 | bfloat16
    min_pixels: int | None = None
    max_pixels: int | None = None
    # activation recompute: none | selective (megatron: core attention only) | full (every layer)
    recompute: str = "none"
    gradient_checkpointing: bool = False  # HF's name for recompute: full
    # HF backend: log-probs through the LM head chunk by chunk (linear_token_logprobs), never
    # materializing the [B, T, V] logits (~0.07x their memory, slower where they would fit)
    chunked_lm_head: bool = False
    # frozen parts of the policy (:func:`mixed_r1.models.freeze.apply_freeze`): requires_grad off
    # before the engine builds its optimizer, so they get no gradient, no fp32 master and no Adam
    # state, stay bit-identical, and are not re-sent to an HF generator after the first sync. The
    # vision tower = patch embedding + vision blocks; the merger = the MLP that projects merged
    # patches into the LM (LLaVA's projector); the language model = embeddings, decoder, final
    # norm and LM head (a tied head is the embedding table). A vision freeze on a text-only LM is
    # a ConfigError (it has no vision tower), as is freezing every part.
    freeze_vision_tower: bool = False
    freeze_merger: bool = False
    freeze_language_model: bool = False

    @property
    def frozen_parts(self) -> tuple[str, ...]:
        """The parts the ``freeze_*`` keys freeze (``vision_tower``, ``merger``,
        ``language_model``; :data:`mixed_r1.models.freeze.PARTS`), in that order."""
        return tuple(k for k in ("vision_tower", "merger", "language_model")
                     if getattr(self, f"freeze_{k}"))

    @property
    def recompute_mode(self) -> str:
        """``recompute`` with ``gradient_checkpointing: true`` read as ``full``."""
        return "full" if self.gradient_checkpointing and self.recompute == "none" else self.recompute


@dataclass
class DataConfig:
    """Training prompts: :class:`mixed_r1.data.Sample` rows from a JSONL/Parquet file, a
    ``datasets.save_to_disk`` directory or a directory of Parquet shards
    (:func:`mixed_r1.data.io.load_samples`)."""

    train_file: str = ""
    eval_file: str | None = None
    # sample field -> the data's column, e.g. {question: query, solution: label, images: image}
    columns: dict[str, str] | None = None
    task_type: str | None = None  # the task type of rows that have none
    shuffle: bool = True
    on_error: str = "raise"  # raise | skip (skipped rows are counted in the log)
    system_prompt: str | None = None  # a system turn before every prompt (None: none)
    instruction: str | None = None  # ends every question; None: the <think>/<answer> one, "": none


@dataclass
class RolloutConfig:
    """Sampling: ``prompts_per_step`` prompts × ``group_size`` completions per step."""

    backend: str = "hf"  # hf | vllm
    prompts_per_step: int = 8
    group_size: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 32  # HF generate batch
    max_prompt_length: int = 1024  # tokens, images included
    tensor_parallel: int | None = None  # ranks per rollout replica; None: parallel.tensor_parallel
    max_model_len: int | None = None  # vllm; default max_prompt_length + max_new_tokens
    gpu_memory_utilization: float = 0.5  # vllm
    enable_sleep_mode: bool = True  # vllm


@dataclass
class AlgoConfig:
    """GRPO. One step: ``ppo_epochs`` passes over the rollouts, each split into ``mini_batches``
    optimizer updates of micro-batches of ``micro_batch_size`` sequences (gradient accumulation), or
    with ``max_tokens_per_micro_batch`` of rows of similar length up to that many padded tokens
    (:func:`mixed_r1.algo.batching.token_budget_micro_batches`; verl's ``use_dynamic_bsz``).
    With one epoch and one mini-batch the update is exactly on-policy (ratio ≡ 1, no old-policy
    pass); otherwise old log-probs come from the policy before the first update."""

    advantage: str = "grpo"  # grpo | dr_grpo | grpo_batch
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo
    importance_level: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0  # KL coefficient (k3 to a frozen reference); > 0 builds the reference
    eps_low: float = 0.2
    eps_high: float = 0.28
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_size: int = 8
    # token budget of one micro-batch (rows x padded length, prompt + completion): when set, each
    # update's rows are sorted by length and cut by it (micro_batch_size then caps the rows)
    max_tokens_per_micro_batch: int | None = None
    # text LMs: each micro-batch's rows packed into one sequence without padding (attention kept
    # within each row; verl's use_remove_padding; megatron-core THD PackedSeqParams on the
    # megatron backend); the budget then counts Σ tokens
    pack_sequences: bool = False
    # text LMs, HF backend: each group's prompt computed once per micro-batch, its completions
    # attending to it through a block mask (Prefix Grouper's shared-prefix forward; verl's
    # use_prefix_grouper); a micro-batch is one padded row per prompt; the budget counts
    # prompts' groups x the longest group
    shared_prefix: bool = False
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards all tie
    # truncated importance sampling against the sampler/trainer mismatch: none | token_tis,
    # each token's surrogate weighted by min(exp(logp_old - logp_rollout), rollout_is_cap)
    rollout_is: str = "none"
    rollout_is_cap: float = 2.0


@dataclass
class OptimConfig:
    """AdamW (torch fused where the device supports it, else foreach).

    ``vision_lr`` / ``merger_lr``: the peak learning rate of the vision tower / of the merger (the
    projector into the LM) when it should differ from ``lr`` (the language model's): a fresh vision
    tower learns at a rate that would wreck a pretrained LM. The keys of Qwen2-VL fine-tuning
    scripts (``vision_lr``, ``merger_lr``; LLaVA's ``mm_projector_lr``); None = ``lr``. Warmup and
    schedule scale them as they scale ``lr`` (each part's rate = its peak x the schedule's factor).
    """

    lr: float = 1e-5
    vision_lr: float | None = None
    merger_lr: float | None = None
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still measured)
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine


@dataclass
class ParallelConfig:
    """Policy backend and its layout. ``backend: hf`` is single-process; ``mcore`` is the
    megatron-core TP/PP/DP policy (:class:`mixed_r1.engine.megatron.MegatronEngine`), launched with
    ``torchrun --nproc_per_node tensor_parallel*pipeline_parallel*data_parallel``.
    ``pipeline_layers``: transformer layers per pipeline stage (megatron's rule: first and last stage
    free, the middle ones equal); ``distributed_optimizer``: megatron-core's distributed optimizer
    (fp32 masters and Adam moments sharded over DP); ``overlap_grad_reduce``: start DP gradient
    reduction during the backward."""

    backend: str = "hf"  # hf | mcore
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    data_parallel: int = 1
    pipeline_layers: list[int] | None = None  # layers per stage, e.g. [10, 9, 9]; None: even
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False


@dataclass
class SFTConfig:
    """``mixed-r1 sft`` (:mod:`mixed_r1.sft`): supervised steps on the same engines, run directory,
    checkpoints and metrics as GRPO; ``steps``, ``optim`` (lr, warmup, schedule, clipping) and
    ``data`` are the run's own keys.

    One step takes ``batch_size`` rows from ``data.train_file`` (the seeded prompt stream), in
    micro-batches of ``micro_batch_size`` rows (gradient accumulation; exact: the loss is the
    token mean over the whole step). The completion each row is trained on:
    ``target: r1`` is ``<think>{think}</think><answer>{solution}</answer>`` (the Mixed-R1 format
    the rewards read), ``solution`` the solution text alone (e.g. captions, LLaVA's stage 1);
    ``max_answer_words`` > 0 cuts the solution to its first N words (0: whole). With
    ``sample_reasoning`` (the default) a row whose ``meta["reasoning"]`` is a non-empty string
    (the data engine writes one where it knows what the image shows, e.g. easy-vqa's "The image
    shows a red circle.") is trained on that as its think text instead of ``think``: the answer
    then follows from words the model wrote about the image. ``eval_every`` > 0: the held-out
    NLL on ``data.eval_file`` every N steps (at most ``eval_samples`` rows)."""

    batch_size: int = 8
    micro_batch_size: int = 8
    target: str = "r1"  # r1 | solution
    think: str = "Look at the image."
    sample_reasoning: bool = True
    max_answer_words: int = 0
    eval_every: int = 0


@dataclass
class LoggingConfig:
    """Experiment trackers fed the same per-step metrics as ``metrics.jsonl`` (TensorBoard: the
    top-level ``tensorboard`` key). ``wandb: true`` logs to Weights & Biases (an optional package:
    ``pip install 'mixed-r1[wandb]'``; a run that asks for it without it fails before building
    anything): project ``wandb_project``, name ``wandb_run_name`` (None: the run directory's
    name), ``wandb_mode`` ``offline`` (files only, no network; ``wandb sync`` uploads them),
    ``online`` or ``disabled`` (nothing logged, wandb not needed); ``wandb_dir``: where wandb
    writes its ``wandb/`` folder (None: the run directory). Only the main rank logs."""

    wandb: bool = False
    wandb_project: str = "mixed-r1"
    wandb_entity: str | None = None  # None: the logged-in user's default entity
    wandb_run_name: str | None = None
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_dir: str | None = None

    def __post_init__(self) -> None:
        modes = ("offline", "online", "disabled")
        if self.wandb_mode not in modes:
            raise ConfigError(f"config key 'logging.wandb_mode': {self.wandb_mode!r} is not one "
                              f"of {modes}")


@dataclass
class TrainConfig:
    """Everything one ``mixed-r1 train`` (or ``mixed-r1 sft``: its ``sft`` section) run needs."""

    seed: int = 0
    steps: int = 10
    out_dir: str = "runs/default"
    log_every: int = 1
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    # false: checkpoints without optimizer state (AdamW's two moments, and in mixed precision the
    # fp32 masters: ~3-4x the weights); they export and evaluate but cannot resume a run
    save_optimizer: bool = True
    eval_every: int = 0
    eval_samples: int = 0  # 0: the whole eval file
    device: str = "cpu"
    progress: bool = True
    tensorboard: bool = True  # used only when the tensorboard package is importable
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)  # mixed-r1 sft only

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------- validation
_CHOICES = {
    "model.kind": ("tiny_qwen25vl", "pretrained"),
    "model.dtype": ("float32", "bfloat16"),
    "model.recompute": ("none", "selective", "full"),
    "data.on_error": ("raise", "skip"),
    "algo.importance_level": ("token", "sequence"),
    "algo.rollout_is": ("none", "token_tis"),
    "optim.schedule": ("constant", "cosine"),
    "parallel.backend": ("hf", "mcore"),
    "sft.target": ("r1", "solution"),
}
_POSITIVE = ("steps", "rollout.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens",
             "rollout.batch_size", "algo.ppo_epochs", "algo.mini_batches", "algo.micro_batch_size",
             "parallel.tensor_parallel", "parallel.pipeline_parallel", "parallel.data_parallel",
             "keep_last", "log_every", "sft.batch_size", "sft.micro_batch_size")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _registry_choices() -> dict[str, tuple[str, ...]]:
    """Keys whose values name a registered function or builder (the ``mixed_r1.algo`` registries
    and ``mixed_r1.rollout.backends.ROLLOUT_BACKENDS``, imported only when a config is validated:
    this module itself loads no torch)."""
    from mixed_r1.algo import ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS
    from mixed_r1.rollout.backends import ROLLOUT_BACKENDS

    return {"algo.advantage": ADVANTAGE_ESTIMATORS.names(),
            "algo.loss_type": LOSS_AGGREGATIONS.names(),
            "rollout.backend": ROLLOUT_BACKENDS.names()}


_DIM_KEYS = {"tp": "parallel.tensor_parallel", "pp": "parallel.pipeline_parallel",
             "dp": "parallel.data_parallel", "rollout_tp": "rollout.tensor_parallel"}


def parallel_dims(cfg: TrainConfig):
    """The run's :class:`~mixed_r1.parallel.dims.ParallelDims` (validated): TP/PP/DP of
    ``parallel`` (one process for ``backend: hf``) and ``rollout.tensor_parallel`` (default: the
    training TP). Raises ConfigError naming the config key of the size that does not fit."""
    from mixed_r1.parallel.dims import ParallelDims, ParallelDimsError

    p, mcore = cfg.parallel, cfg.parallel.backend == "mcore"
    tp, pp, dp = (p.tensor_parallel, p.pipeline_parallel, p.data_parallel) if mcore else (1, 1, 1)
    try:
        rtp = tp if cfg.rollout.tensor_parallel is None else cfg.rollout.tensor_parallel
        return ParallelDims(tp=tp, pp=pp, dp=dp, rollout_tp=rtp)
    except ParallelDimsError as exc:
        key = _DIM_KEYS.get(exc.dim, "parallel")
        raise ConfigError(f"config key '{key}': {exc}") from None


def _validate_data_columns(cfg: TrainConfig) -> None:
    """``data.columns`` maps sample fields to column names (strings); ``data.task_type`` is a
    known task type."""
    from mixed_r1.tasks import SAMPLE_FIELDS

    for field_, col in (cfg.data.columns or {}).items():
        if field_ not in SAMPLE_FIELDS:
            raise ConfigError(f"config key 'data.columns.{field_}': not a sample field (fields: "
                              f"{', '.join(SAMPLE_FIELDS)})")
        if not isinstance(col, str) or not col:
            raise ConfigError(f"config key 'data.columns.{field_}' must be a column name, got "
                              f"{col!r}")
    known = cfg.reward.task_types  # the built-in ones and those reward.functions adds
    if cfg.data.task_type is not None and cfg.data.task_type not in known:
        raise ConfigError(f"config key 'data.task_type': {cfg.data.task_type!r} is not one of "
                          f"{known} (a new task type needs a reward: reward.functions)")


FREEZE_KEYS = ("freeze_vision_tower", "freeze_merger", "freeze_language_model")


def _validate_freeze(cfg: TrainConfig) -> None:
    """Freezing every part leaves nothing to train; a frozen language model on megatron needs one
    pipeline stage (the stages past the first hold only language-model layers)."""
    m, p = cfg.model, cfg.parallel
    if len(m.frozen_parts) == len(FREEZE_KEYS):
        raise ConfigError("config keys 'model.freeze_vision_tower', 'model.freeze_merger' and "
                          "'model.freeze_language_model' are all true: nothing would train")
    for key in ("vision_lr", "merger_lr"):
        v = getattr(cfg.optim, key)
        if v is not None and not v > 0:
            raise ConfigError(f"config key 'optim.{key}' must be > 0 (or null: optim.lr), got {v}")
        if v is not None and not cfg.optim.lr > 0:  # the parts' rates are multiples of optim.lr
            raise ConfigError(f"config key 'optim.{key}' needs optim.lr > 0 (each part's rate is "
                              f"a multiple of it), got optim.lr={cfg.optim.lr}")
    if m.freeze_language_model and p.backend == "mcore" and p.pipeline_parallel > 1:
        raise ConfigError("config key 'model.freeze_language_model' with "
                          f"parallel.pipeline_parallel={p.pipeline_parallel}: the pipeline stages "
                          "past the first hold only language-model layers, so they would have "
                          "nothing to train; use pipeline_parallel: 1")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check value ranges and choices; raise one :class:`ConfigError` naming the key."""
    for key, choices in {**_CHOICES, **_registry_choices()}.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"config key '{key}': {_get(cfg, key)!r} is not one of {choices}")
    for key in _POSITIVE:
        if _get(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {_get(cfg, key)}")
    if cfg.model.gradient_checkpointing and cfg.model.recompute == "selective":
        raise ConfigError("config keys 'model.gradient_checkpointing' (= recompute: full) and "
                          "'model.recompute: selective' disagree; set one of them")
    if cfg.model.recompute_mode == "selective" and cfg.parallel.backend != "mcore":
        raise ConfigError("config key 'model.recompute: selective' needs parallel.backend=mcore "
                          "(megatron's core-attention recompute); the HF backend recomputes "
                          "whole layers: use 'full'")
    if cfg.model.kind == "pretrained" and not cfg.model.path:
        raise ConfigError("config key 'model.path' is required when model.kind is 'pretrained'")
    _validate_data_columns(cfg)
    if cfg.algo.rollout_is_cap <= 0:
        raise ConfigError(f"config key 'algo.rollout_is_cap' must be > 0, got {cfg.algo.rollout_is_cap}")
    if cfg.algo.beta < 0:
        raise ConfigError(f"config key 'algo.beta' must be >= 0, got {cfg.algo.beta}")
    if cfg.rollout.temperature <= 0:
        raise ConfigError("config key 'rollout.temperature' must be > 0 for GRPO sampling "
                          f"(got {cfg.rollout.temperature})")
    budget = cfg.algo.max_tokens_per_micro_batch
    longest = cfg.rollout.max_prompt_length + cfg.rollout.max_new_tokens
    if budget is not None and budget < longest:
        raise ConfigError(f"config key 'algo.max_tokens_per_micro_batch'={budget} is below the "
                          f"longest row, rollout.max_prompt_length + max_new_tokens = {longest}")
    if cfg.model.chunked_lm_head and cfg.parallel.backend != "hf":
        raise ConfigError("config key 'model.chunked_lm_head' is for parallel.backend: hf (the "
                          "megatron head is vocab-parallel and sees only completion positions)")
    for key in ("pack_sequences", "shared_prefix"):
        if getattr(cfg.algo, key) and cfg.model.kind != "pretrained":
            raise ConfigError(f"config key 'algo.{key}' needs a text LM (model.kind: "
                              "pretrained); Qwen2.5-VL's 3-D rope positions are not packed")
    if cfg.algo.shared_prefix and cfg.parallel.backend != "hf":
        raise ConfigError("config key 'algo.shared_prefix' is for parallel.backend: hf "
                          "(megatron-core's packed attention has no shared-prefix mask)")
    if cfg.algo.shared_prefix and cfg.algo.pack_sequences:
        raise ConfigError("config keys 'algo.shared_prefix' and 'algo.pack_sequences' are two "
                          "packed layouts; set one")
    p = cfg.parallel
    from mixed_r1.parallel.dims import ParallelDimsError

    try:
        parallel_dims(cfg).check_prompts(cfg.rollout.prompts_per_step)
    except ParallelDimsError as exc:
        raise ConfigError(f"config key 'rollout.prompts_per_step': {exc}") from None
    layers = cfg.parallel.pipeline_layers
    if layers is not None and (len(layers) != cfg.parallel.pipeline_parallel
                               or any(not isinstance(x, int) or x < 1 for x in layers)):
        raise ConfigError(f"config key 'parallel.pipeline_layers': {layers!r} must list one "
                          f"positive layer count per pipeline stage "
                          f"(pipeline_parallel={cfg.parallel.pipeline_parallel})")
    if p.backend == "hf" and (world_shape := (p.tensor_parallel, p.pipeline_parallel,
                                              p.data_parallel)) != (1, 1, 1):
        raise ConfigError(f"config key 'parallel.backend: hf' is one process: "
                          f"tensor/pipeline/data_parallel = {world_shape} need parallel.backend: mcore")
    if p.backend == "hf" and (p.distributed_optimizer or p.pipeline_layers):
        raise ConfigError("config keys 'parallel.distributed_optimizer' / 'parallel.pipeline_layers' "
                          "need parallel.backend: mcore")
    for key in ("save_every", "eval_every", "eval_samples", "sft.max_answer_words",
                "sft.eval_every"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {_get(cfg, key)}")
    for key in ("eval_every", "sft.eval_every"):
        if _get(cfg, key) and not cfg.data.eval_file:
            raise ConfigError(f"config key '{key}'={_get(cfg, key)} needs 'data.eval_file' "
                              "(the held-out set evaluated every eval_every steps)")
    _validate_freeze(cfg)
    r = cfg.rollout
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {r.top_p}")
    if not 0 < r.gpu_memory_utilization <= 1:
        raise ConfigError("config key 'rollout.gpu_memory_utilization' must be in (0, 1], got "
                          f"{r.gpu_memory_utilization}")
    if r.max_prompt_length < 1:
        raise ConfigError(f"config key 'rollout.max_prompt_length' must be >= 1, got {r.max_prompt_length}")
    if r.max_model_len is not None and r.max_model_len < r.max_prompt_length + r.max_new_tokens:
        raise ConfigError(f"config key 'rollout.max_model_len'={r.max_model_len} is shorter than "
                          f"rollout.max_prompt_length + rollout.max_new_tokens = "
                          f"{r.max_prompt_length + r.max_new_tokens}")
    if cfg.algo.eps_low < 0 or cfg.algo.eps_high < 0:
        raise ConfigError("config keys 'algo.eps_low' / 'algo.eps_high' must be >= 0, got "
                          f"{cfg.algo.eps_low} / {cfg.algo.eps_high}")
    n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if cfg.algo.mini_batches > n:
        raise ConfigError(f"config key 'algo.mini_batches'={cfg.algo.mini_batches} exceeds the "
                          f"{n} completions per step")
    return cfg


def validate_model_layout(cfg: TrainConfig, hf_config: dict[str, Any], origin: str = "config") -> None:
    """The rules that need the model's shapes (its HF ``config.json`` as a dict): the policy's
    TP/PP split (heads, KV groups and FFN divisible by TP; ``pipeline_layers`` as megatron can
    build it), the rollout TP dividing the attention heads, and the longest sequence within the
    model's positions. Raises one :class:`ConfigError`; called by ``mixed-r1 plan`` and by the
    trainer before any process group or model is built."""
    from mixed_r1.models.config import UnsupportedConfigError, arch_from_hf_config

    p, r = cfg.parallel, cfg.rollout
    mcore = p.backend == "mcore"
    tp, pp = (p.tensor_parallel, p.pipeline_parallel) if mcore else (1, 1)
    _check_freeze_fits(cfg, hf_config, origin)
    try:
        arch = arch_from_hf_config(hf_config)
    except UnsupportedConfigError as exc:
        if not mcore:  # the HF backend trains any causal LM transformers builds
            return
        raise ConfigError(f"{origin}: parallel.backend=mcore: {exc}") from None
    try:
        arch.check_parallel(tp, pp, p.pipeline_layers)
    except UnsupportedConfigError as exc:
        keys = "parallel.tensor_parallel / parallel.pipeline_parallel" + (
            " / parallel.pipeline_layers" if p.pipeline_layers else "")
        raise ConfigError(f"{origin}: config keys {keys} (TP={tp}, PP={pp}) do not fit the "
                          f"model: {exc}") from None
    rtp = r.tensor_parallel or tp
    if r.backend == "vllm" and arch.num_heads % rtp:
        raise ConfigError(f"{origin}: config key 'rollout.tensor_parallel'={rtp} does not divide "
                          f"the model's {arch.num_heads} attention heads")
    seq = r.max_prompt_length + r.max_new_tokens
    if seq > arch.max_position_embeddings:
        raise ConfigError(f"{origin}: rollout.max_prompt_length + rollout.max_new_tokens = {seq} "
                          f"exceeds the model's max_position_embeddings "
                          f"{arch.max_position_embeddings}")


def _check_freeze_fits(cfg: TrainConfig, hf_config: dict[str, Any], origin: str) -> None:
    """A vision freeze needs a vision tower: on a text-only LM (no ``vision_config``) it is a
    ConfigError rather than a silent no-op, and so is freezing a text LM's language model (all
    it has)."""
    m = cfg.model
    if hf_config.get("vision_config") is not None:
        return
    name = m.path or m.kind
    for key in ("freeze_vision_tower", "freeze_merger"):
        if getattr(m, key):
            raise ConfigError(f"{origin}: config key 'model.{key}': {name} is a text-only LM "
                              "(no vision tower or merger); drop the key")
    if m.freeze_language_model:
        raise ConfigError(f"{origin}: config key 'model.freeze_language_model': {name} is a "
                          "text-only LM, so freezing its language model leaves nothing to train")
    for key in ("vision_lr", "merger_lr"):
        if getattr(cfg.optim, key) is not None:
            raise ConfigError(f"{origin}: config key 'optim.{key}': {name} is a text-only LM "
                              "(no vision tower or merger); drop the key")


# ------------------------------------------------------------------------------- building
def _hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    """Check/convert a YAML value against a field's type hint (int→float allowed)."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ConfigError(f"{origin}: config key '{key}' may not be null")
    if args and type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
    base = typing.get_origin(hint) or hint
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base in (dict, list, tuple):
        if isinstance(value, base if base is not tuple else (list, tuple)):
            return value
    else:
        return value
    raise ConfigError(f"{origin}: config key '{key}' expects {getattr(base, '__name__', base)}, "
                      f"got {value!r}")


def from_dict(cls: type, data: dict, origin: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: config key '{prefix.rstrip('.') or '<root>'}' must be a "
                          f"mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{origin}: unknown config key '{full}' (known keys"
                              f"{' in ' + repr(prefix.rstrip('.')) if prefix else ''}: "
                              f"{', '.join(names)})")
        hint = hints[key]
        if is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, origin, full + ".")
        else:
            kwargs[key] = _coerce(value, hint, full, origin)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: section '{prefix.rstrip('.') or '<root>'}': {exc}") from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"command line: override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"command line: override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Set ``a.b.c=value`` items into the nested dict ``data`` (creating sections as needed)."""
    for item in overrides or []:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"command line: override {item!r}: '{part}' is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def _check_keys(cls: type, data: dict, origin: str, prefix: str = "") -> None:
    """Raise on the first unknown key before building (so the origin is right)."""
    names = {f.name: f for f in fields(cls)}
    hints = _hints(cls)
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{origin}: unknown config key '{prefix}{key}' (known keys"
                              f"{' in ' + repr(prefix.rstrip('.')) if prefix else ''}: "
                              f"{', '.join(names)})")
        if is_dataclass(hints[key]) and isinstance(value, dict):
            _check_keys(hints[key], value, origin, f"{prefix}{key}.")


def _yaml_problem(exc: Exception) -> str:
    """A YAML parser error as one line: `` at line L, column C: problem (context)`` (1-based;
    PyYAML's own message spans several lines with a source excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ": " + " ".join(str(exc).split())
    problem = getattr(exc, "problem", None) or "syntax error"
    context = getattr(exc, "context", None)
    cmark = getattr(exc, "context_mark", None)
    if context and cmark is not None:
        context += f" started at line {cmark.line + 1}, column {cmark.column + 1}"
    return (f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
            + (f" ({context})" if context else ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + ``key.sub=value`` overrides → validated :class:`TrainConfig`."""
    import yaml

    data: dict = {}
    origin = "<defaults>"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML{_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config keys")
        _check_keys(TrainConfig, data, origin)
    if overrides:
        if path is not None:
            from_dict(TrainConfig, data, origin)  # type errors in the file name the file
        over = apply_overrides({}, overrides)
        _check_keys(TrainConfig, over, "command line")
        data = _merge(data, over)
        origin = f"{origin} + command line" if path is not None else "command line"
    return validate(from_dict(TrainConfig, data, origin))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(data: dict, origin: str = "<dict>") -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (checkpoints)."""
    _check_keys(TrainConfig, data, origin)
    return validate(from_dict(TrainConfig, data, origin))


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = ["FREEZE_KEYS", "AlgoConfig", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig",
           "ParallelConfig", "RolloutConfig", "SFTConfig", "TrainConfig", "apply_overrides",
           "parallel_dims",
           "config_from_dict", "dump_yaml", "from_dict", "load_config", "validate"]
