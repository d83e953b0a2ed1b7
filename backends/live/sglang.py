"""SGLangBackend: the SGLang flag mapping and launch command (``python -m sglang.launch_server``).

SGLang's wheels on the registry are CUDA-only, so on these CPU machines ``run`` raises
EngineError("SGLang is not installed ..."). The mapping (``backends.live.flags.sglang_args``)
is checked in tests against SGLang 0.5.23's own field definitions. On a GPU machine with
SGLang installed, ``run`` serves through the same OpenAI-compatible replay and metrics code
as vLLM (SGLang's /metrics names differ: ``sglang:*``; see docs/live.md).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from backends.base import Deployment, RunResult
from backends.live.flags import FlagMapping, sglang_args
from backends.live.vllm import VLLMBackend
from backends.live.vllm_python import EngineError
from tuner.policy import Policy
from workloads.workload import Workload

__all__ = ["EngineError", "SGLangBackend", "find_sglang_python"]

MODULE = "sglang.launch_server"
ENV_VAR = "SERVETUNE_SGLANG_PYTHON"
NOT_INSTALLED = ("SGLang is not installed (pip install 'sglang[all]' on a CUDA machine, or set "
                 "SERVETUNE_SGLANG_PYTHON); its flag mapping works without it: servetune engine flags "
                 "POLICY.yaml --engine sglang")


def find_sglang_python() -> str:
    """``$SERVETUNE_SGLANG_PYTHON``, else this interpreter when it can import sglang."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not Path(explicit).is_file():
            raise EngineError(f"{ENV_VAR}={explicit}: no such file. {NOT_INSTALLED}")
        return explicit
    if importlib.util.find_spec("sglang") is not None:
        return sys.executable
    raise EngineError(NOT_INSTALLED)


class SGLangBackend(VLLMBackend):
    """A live SGLang engine (GPU only): VLLMBackend's server pool, replay and telemetry with
    SGLang's flags and launcher. NOT RUN ANYWHERE YET: SGLang needs CUDA; where it is absent,
    ``run`` raises EngineError("SGLang is not installed ...")."""

    name = "sglang"
    module = MODULE
    measure_args = ("--enable-metrics",)

    def find_python(self) -> str:
        return self.python or find_sglang_python()

    def flags(self, policy: Policy, deployment: Deployment, model_path: str | None = None) -> FlagMapping:
        return sglang_args(policy, deployment, model_path=model_path or deployment.model,
                           kv_cache_bytes=self.kv_cache_bytes)

    def command(self, policy: Policy, deployment: Deployment, *, port: int = 30000) -> list[str]:
        """The launch argv (a list, never a shell string)."""
        m = sglang_args(policy, deployment, port=port, host="127.0.0.1")
        return m.command("sglang", self.find_python())

    def check_workload(self, workload: Workload) -> None:
        """ValueError for multi-turn sessions: the replay builds a later turn's prompt from the
        previous turn's generated token ids (vLLM's ``return_token_ids``), not checked on SGLang."""
        if workload.has_sessions:
            raise ValueError(f"workload {workload.name!r} has multi-turn sessions: the live replay sends "
                             "conversations to vLLM only (simulate them, or use --backend vllm)")

    def run(self, policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0) -> RunResult:
        self.check_policy(policy, deployment)  # a cluster knob it does not deploy: ValueError, nothing started
        self.find_python()  # EngineError("SGLang is not installed ...") before anything else
        return super().run(policy, workload, deployment, seed=seed)
