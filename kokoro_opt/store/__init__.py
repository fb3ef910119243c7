"""Model store: the cache folder, pulling the real Kokoro-82M offline, resolving MODEL arguments,
verifying cached models against their sidecars and repairing them."""

from __future__ import annotations

from kokoro_opt.store.cache import (
    DEFAULT_NAMES,
    FP32_NAME,
    INT8_NAME,
    cache_dir,
    list_models,
    model_file,
    models_dir,
    resolve_model,
)
from kokoro_opt.store.pull import (
    ensure_default_models,
    pull_default,
    register_model,
    register_output,
)
from kokoro_opt.store.repair import ModelCheck, repair, verify_all
from kokoro_opt.store.verify import Verified, verified_sha256, verify_model

__all__ = [
    "DEFAULT_NAMES",
    "FP32_NAME",
    "INT8_NAME",
    "ModelCheck",
    "Verified",
    "cache_dir",
    "ensure_default_models",
    "list_models",
    "model_file",
    "models_dir",
    "pull_default",
    "register_model",
    "register_output",
    "repair",
    "resolve_model",
    "verified_sha256",
    "verify_all",
    "verify_model",
]
