"""Every string that one part of tsearch writes and another reads back.

Metric keys, the key ASHA counts time in, MLflow tags and param prefixes, the config keys read
back from a trial's flat values, and the files of a run directory: a writer and its readers (the
trainer, the Ray trainable, the driver's callbacks, ``tsearch runs``/``report``/``export``)
import the name from here, so renaming one cannot silently split them. A leaf: imports nothing
of tsearch.

Once committed, a value never changes meaning: MLflow stores of earlier searches use it.
"""

from __future__ import annotations

import re
from pathlib import Path

# --- Metric keys (slash-namespaced) -------------------------------------------------------------
FID = "eval/fid"  # the search metric (lower is better)
EVAL_SECONDS = "eval/seconds"
EVAL_GENERATE_SECONDS = "eval/generate_seconds"
TRAIN_LOSS = "train/loss"  # the optimised (weighted) objective
TRAIN_LOSS_UNWEIGHTED = "train/loss_unweighted"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_LR = "train/lr"
TRAIN_BETA1 = "train/beta1"
TRAIN_PREFIX = "train/"
PROGRESS_KIMG = "progress/kimg"
COMPUTE_PREFIX = "compute/"
PROBE_FORWARDS = "compute/probe_forwards"
TRAIN_FORWARDS = "compute/train_forwards"
IMAGES_PER_S = "perf/images_per_s"
PERF_WALL_SECONDS = "perf/wall_seconds"  # since the run (or trial) began, at each evaluation
PERF_TRAIN_SECONDS = "perf/train_seconds"  # optimizer steps and their loss statistics
PERF_EVAL_SECONDS = "perf/eval_seconds"  # evaluations (FID: generation and features)
PERF_EVAL_SHARE = "perf/eval_share"  # eval / wall
PERF_OVERHEAD_SHARE = "perf/overhead_share"  # neither: set-up, checkpoints, reports, logging
SEARCH_BEST_FID = "search/best_fid"
SEARCH_PREDICTED_FID = "search/recommended_predicted_fid"  # the model's pick, predicted final FID
SEARCH_TRIALS = "search/trials"
CONFIRM_FID_MEAN = "confirm/fid_mean"  # the confirmed winner's final FID, mean over seeds
CONFIRM_FID_STD = "confirm/fid_std"
CONFIRM_SPEEDUP_KIMG = "confirm/speedup_kimg"  # over the baseline, to its final FID
CONFIRM_SPEEDUP_COMPUTE = "confirm/speedup_compute"
CONFIRM_WINNERS_CURSE = "confirm/winners_curse"  # search FID minus confirmed mean
CONFIRM_KENDALL_TAU = "confirm/kendall_tau"  # search ranking vs confirmed ranking
CONFIRM_P_VALUE = "confirm/p_value"  # paired t-test, leader vs runner-up (one-sided)
CONFIRM_TRIAL_KIMG = "confirm/trial_kimg"  # kimg the confirmation runs trained together
CONFIRM_RUNS = "confirm/runs"
# 1 when the winner's confirm/speedup_kimg is only a lower bound (docs/search.md, 2).
CONFIRM_SPEEDUP_IS_BOUND = "confirm/speedup_kimg_is_bound"
TAG_CONFIRM_SPEEDUP = "tsearch.confirm_speedup"  # the winner's speed-up as text: ">= 3.96x"
TAG_CONFIRM_VERDICT = "tsearch.confirm_verdict"  # the leader vs the runner-up, in words


def loss_quartile(i: int) -> str:
    """Mean unweighted loss of the ``i``-th quarter of the timesteps (1 = least noise)."""
    return f"train/loss_q{i}"


# --- Config keys read back from a trial's flat dotted values ------------------------------------
# The sampler's, the weighting's and the seed's are tsearch.labels' SAMPLER_KEY, WEIGHTING_KEY and
# SEED_KEY: a label is built around them, and a leaf imports no other module of tsearch.
SCHEDULE_KEY = "diffusion.schedule"
TOTAL_KIMG_KEY = "train.total_kimg"
BATCH_SIZE_KEY = "train.batch_size"
METHOD_KEY = "method"  # a bundle label, not a config field: names a report row (confirmation runs)


# --- What a trial reports to Ray Tune -----------------------------------------------------------
TIME_ATTR = "kimg"  # ASHA's clock: training images seen / 1000
REPORT_STEP = "step"
REPORT_RUN_ID = "mlflow_run_id"
REPORT_NODE_IP = "node_ip"
REPORT_TRIAL_ID = "trial_id"  # filled in by Tune

# --- MLflow tags --------------------------------------------------------------------------------
TAG_KIND = "tsearch.kind"  # KIND_SEARCH on a parent run, KIND_TRIAL on a child run
KIND_SEARCH = "search"
KIND_TRIAL = "trial"
TAG_SEARCH = "tsearch.search"  # the search name
TAG_STORAGE = "tsearch.storage"  # the search's Ray experiment directory
TAG_TRIAL_ID = "tsearch.trial_id"
TAG_NODE_IP = "tsearch.node_ip"
TAG_WORKER_PID = "tsearch.worker_pid"  # the trial's process (search.reuse_actors: shared)
TAG_RUN_DIR = "tsearch.run_dir"
TAG_SAMPLER = "tsearch.sampler"
TAG_WEIGHTING = "tsearch.weighting"
TAG_PT_COLLAPSED = "tsearch.pt_collapsed"  # on a run: kimg at which its learned p(t) collapsed
TAG_EVAL_BACKEND = "tsearch.fid_extractor"  # which extractor (and weights) scored the run
TAG_BEST_TRIAL_RUN = "tsearch.best_trial_run"
TAG_BEST_FID = "tsearch.best_fid"
TAG_RECOMMENDED = "tsearch.recommended"  # the model's pick (search/recommend.py), by label
TAG_ENDED_BY = "tsearch.ended_by"
TAG_END_REASON = "tsearch.end_reason"  # on a trial run: END_FINISHED, stopped_at(), failed_with()
END_FINISHED = "finished"  # trained to its full budget
TAG_FAILURE_REASON = "tsearch.failure_reason"
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own
TAG_PHASE = "tsearch.phase"  # on a trial's child run: PHASE_SEARCH or PHASE_CONFIRM
PHASE_SEARCH = "search"  # proposals, stopped early by ASHA
PHASE_CONFIRM = "confirm"  # the top configurations retrained on fresh seeds, full budget
TAG_CONFIRMED = "tsearch.confirmed_winner"  # on the parent run: the confirmed winner's label
TAG_WARM_START = "tsearch.warm_start"  # on the parent run: the search it was warm-started from
TAG_NOTE = "mlflow.note.content"  # MLflow's own: a run's description (Markdown), on the parent
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own, on an experiment: what its UI shows
EXPERIMENT_KIND = "custom_model_development"  # training runs (the UI's other kind is GenAI traces)


def stopped_at(kimg: float, asha: bool) -> str:
    """The end reason of a trial stopped before its budget: by ASHA at its rung ``kimg``, or by
    Tune for another reason at ``kimg``."""
    return f"stopped by ASHA at rung {kimg:g} kimg" if asha else f"stopped at {kimg:g} kimg"


def failed_with(reason: str) -> str:
    """The end reason of a failed trial."""
    return f"failed: {reason}"


# --- MLflow param prefixes (params are flat dotted strings) -------------------------------------
PARAM_CONFIG = "config"  # a run's whole resolved config
PARAM_TRIAL = "trial"  # a trial's searched values
PARAM_SEARCH = "search"  # the search section, on the parent run
PARAM_BASE = "base"  # the config every trial starts from, on the parent run
PARAM_MODEL_SIZE = "model/parameters"
PARAM_DEVICE = "device"


def strip_prefix(params: dict[str, str], prefix: str) -> dict[str, str]:
    """The params logged under ``prefix`` (e.g. PARAM_TRIAL), with ``prefix.`` removed."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in params.items() if k.startswith(head)}


# --- MLflow artifacts ---------------------------------------------------------------------------
ARTIFACT_CONFIG = "config.json"
ARTIFACT_SEARCH_CONFIG = "search_config.json"
ARTIFACT_PLOTS = "plots"
ARTIFACT_SAMPLES = "samples"  # a grid of generated images per evaluation
GRID_IMAGES = 64  # images per grid: the first per-image seeds, so every grid shares latents
ARTIFACT_FAILURE = "failure.txt"
ARTIFACT_BEST_CONFIG = "best_config.yaml"  # the search phase's best trial (unconfirmed)
ARTIFACT_CONFIRMED_CONFIG = "confirmed_config.yaml"  # the confirmed winner
ARTIFACT_CONFIRMED = "confirmed.json"  # the confirmed ranking: per method, per seed
TIMESTEPS_DIR = "timesteps"  # p(t) snapshots, one .npy per evaluation
_PT_FILE = re.compile(r"^p_t_(\d+)\.npy$")


def pt_artifact(images_seen: int) -> str:
    """Artifact path of the p(t) snapshot taken at ``images_seen``."""
    return f"{TIMESTEPS_DIR}/p_t_{images_seen:09d}.npy"


def wt_artifact(images_seen: int) -> str:
    """Artifact path of a learned weighting's w(t) snapshot taken at ``images_seen``."""
    return f"{TIMESTEPS_DIR}/w_t_{images_seen:09d}.npy"


def pt_images_seen(filename: str) -> int | None:
    """Inverse of :func:`pt_artifact` on a file name; None if it is not a snapshot."""
    match = _PT_FILE.match(filename)
    return int(match.group(1)) if match else None


# --- Files on disk ------------------------------------------------------------------------------
class RunDir:
    """The files of one training run's directory (``tsearch train`` or one search trial)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")  # resolved config
    run_info = property(lambda self: self.path / "run.json")  # {"run_id": MLflow run id}
    metrics = property(lambda self: self.path / "metrics.jsonl")  # every logged record
    timesteps = property(lambda self: self.path / "timesteps.npz")  # p(t) over training
    checkpoints = property(lambda self: self.path / "checkpoints")
    heatmap = property(lambda self: self.path / "p_t_heatmap.png")
    weight_heatmap = property(lambda self: self.path / "w_t_heatmap.png")  # learned weighting
    fid_curve = property(lambda self: self.path / "fid_curve.png")
    samples = property(lambda self: self.path / "samples")  # grid-kimg00020.000.png, ...

    def grid(self, kimg: float) -> Path:
        """The sample grid of the evaluation at ``kimg`` (names sort by training progress)."""
        return self.samples / f"grid-kimg{kimg:09.3f}.png"


TRIAL_RUN_SUBDIR = "run"  # a trial's RunDir inside its Ray trial directory
TRIAL_INFO = "tsearch-trial.json"  # in a trial's Tune checkpoint: its MLflow run id
SEARCH_STATE = "tsearch-search.json"  # in a search's Ray experiment directory
SEARCH_SUMMARY_SUBDIR = "summary"  # trials.csv, plots and best_config.yaml of a search


def trial_run_dir(trial_dir: str | Path) -> RunDir:
    """The run directory a trial's trainer writes into."""
    return RunDir(Path(trial_dir) / TRIAL_RUN_SUBDIR)


# --- User-given names and URIs ------------------------------------------------------------------
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot name a directory we create (search name, run name); None if it can.

    Names become path components under a root we own, so separators, ``..`` and odd characters
    would write elsewhere or break shells and MLflow queries.
    """
    if _SAFE_NAME.match(value) and ".." not in value:
        return None
    return (f"{value!r} is not a safe name: use 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit, no '..' or path separators")


# The userinfo of a URI's authority: after the scheme, up to the last "@" before the path, query
# or fragment (a password may hold an unescaped "@"; a token alone is userinfo too).
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")


def mask_uri(uri: str, *, strip: bool = False) -> str:
    """``uri`` safe to print, log and export: a password shown as ``***`` (``user:***@host``), a
    lone user part as ``***`` (it may itself be a token); with ``strip``, no userinfo at all
    (``host``), for a request that sends no credentials and a message about that request."""
    match = _USERINFO.match(uri)
    if not match:
        return uri
    user, sep, _ = match.group(2).partition(":")
    shown = "" if strip else (f"{user}:***@" if sep else "***@")
    return f"{match.group(1)}{shown}{uri[match.end():]}"


# --- When a learned p(t) has collapsed (TAG_PT_COLLAPSED) -----------------------------------
COLLAPSE_ENTROPY = 1.0  # nats: p(t) on about e = 2.7 timesteps (uniform over 1000: 6.9)
COLLAPSE_TV = 0.9  # total variation from uniform


def collapse_problem(metrics: dict[str, float]) -> str | None:
    """Why a learned p(t) counts as collapsed, from its logged sampler metrics; None if not.

    Training then sees a few timesteps only (docs/algorithms.md 1.9); either threshold alone is
    enough, since a p(t) can sit on a narrow band (low entropy) or far from uniform (high TV)."""
    ent, tv = metrics.get("sampler/entropy"), metrics.get("sampler/tv_uniform")
    if ent is not None and ent < COLLAPSE_ENTROPY:
        return f"entropy {ent:.2f} nats < {COLLAPSE_ENTROPY:g}"
    if tv is not None and tv > COLLAPSE_TV:
        return f"TV from uniform {tv:.3f} > {COLLAPSE_TV:g}"
    return None
