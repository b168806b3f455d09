"""How long a qwen3:32b engine step takes on a given machine.

The model and its figures are in docs/simulator-calibration.md §2–3: decode is memory-bound,
so a step that carries n tokens (one per generating stream plus any prompt tokens being prefilled) costs
t0·max(1 + a·log2 n, n/knee) + k_kv·Σctx + overhead. Every stream in the batch gets its token at the end
of the same step, and prefill of a newly admitted prompt lengthens the step everyone is waiting on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    decode_rate: float  # tokens/s of a single stream at short context (TG1); 0 means no delay at all
    prompt_rate: float  # prompt tokens/s (PP); sets how many prompt tokens a step is worth
    batch_growth: float  # a: relative step-time growth per doubling of the batch
    knee: float  # tokens per step beyond which a step is compute-bound
    kv_seconds_per_token: float  # extra step time per context token held by an active stream
    overhead: float  # sampling, graph launch, HTTP: seconds per step
    load_seconds: float  # cold model load on first use
    num_batch: int  # prompt tokens one step may carry (Ollama's num_batch)
    context_length: int  # default num_ctx, as the backend would pick it for this VRAM

    def step_seconds(self, tokens: int, context_tokens: int) -> float:
        """Wall time of one engine step carrying `tokens` tokens for streams holding `context_tokens`."""
        if self.decode_rate <= 0 or tokens <= 0:
            return 0.0
        t0 = 1.0 / self.decode_rate
        growth = max(1.0 + self.batch_growth * math.log2(tokens), tokens / self.knee)
        return t0 * growth + self.kv_seconds_per_token * context_tokens + self.overhead


PROFILES: dict[str, Profile] = {
    "4090": Profile(
        name="4090",
        description="1× RTX 4090, Ollama, qwen3:32b Q4_K_M: ~34 tok/s alone, ~2,000 prompt tok/s",
        decode_rate=36.0,
        prompt_rate=2000.0,
        batch_growth=0.14,
        knee=60.0,
        kv_seconds_per_token=0.33e-6,
        overhead=0.001,
        load_seconds=9.0,
        num_batch=512,
        context_length=4096,
    ),
    "2x4090": Profile(
        name="2x4090",
        description="2× RTX 4090 layer split, Ollama: a few % slower per step, room for ~100k tokens of KV",
        decode_rate=34.5,
        prompt_rate=1900.0,
        batch_growth=0.14,
        knee=56.0,
        kv_seconds_per_token=0.33e-6,
        overhead=0.0012,
        load_seconds=10.0,
        num_batch=512,
        context_length=8192,
    ),
    "h100": Profile(
        name="h100",
        description="1× H100 SXM, Ollama/llama.cpp: ~48 tok/s alone, KV not the limit",
        decode_rate=50.0,
        prompt_rate=2500.0,
        batch_growth=0.12,
        knee=50.0,
        kv_seconds_per_token=0.09e-6,
        overhead=0.001,
        load_seconds=6.0,
        num_batch=512,
        context_length=32768,
    ),
    "vllm-h100": Profile(
        name="vllm-h100",
        description="1× H100, vLLM BF16 continuous batching: flat step growth, chunked prefill, loaded at start",
        decode_rate=45.0,
        prompt_rate=12000.0,
        batch_growth=0.04,
        knee=400.0,
        kv_seconds_per_token=0.09e-6,
        overhead=0.0015,
        load_seconds=0.0,
        num_batch=8192,
        context_length=32768,
    ),
    "instant": Profile(
        name="instant",
        description="no model time at all: tokens as fast as the event loop goes (functional tests)",
        decode_rate=0.0,
        prompt_rate=0.0,
        batch_growth=0.0,
        knee=1.0,
        kv_seconds_per_token=0.0,
        overhead=0.0,
        load_seconds=0.0,
        num_batch=512,
        context_length=40960,
    ),
}
